"""Every class of bad input is a one-line error: exit 2 from the command line, a ``LlavaAccelError`` from the API.

The corpus is a table. Command-line cases run in-process (``main(argv)``), most with the model loader replaced by one
that fails the test, which proves they are refused before any model loads; a few run in a real subprocess, where
the exit code and stderr are the user's. API cases check the exception type.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import llava_accel as la
from llava_accel.cli import main
from llava_accel.errors import LlavaAccelError, OptionError, PromptTooLongError, ResultsFileError
from llava_accel.outputs import OutputPathError
from llava_accel.tasks import synthetic_samples

SPEC = 'backends = ["cpu"]\ntasks = ["synthetic-textvqa"]\nbatch_sizes = [1]\nlimit = 1\n'


def _png_header(width: int, height: int) -> bytes:
    """A PNG that announces ``width`` x ``height`` pixels and holds none: PIL's bomb check fires on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def _data_folder(root: Path, image: Path, prompt_line: bytes) -> Path:
    root.mkdir()
    (root / "img.png").write_bytes(image.read_bytes())
    (root / "samples.jsonl").write_bytes(b'{"image": "img.png", "references": [], "prompt": ' + prompt_line + b"}\n")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The bad files of the corpus (and a good image), by name."""
    d = tmp_path_factory.mktemp("bad")
    image = d / "word.png"
    synthetic_samples("synthetic-textvqa", 1)[0].image.save(image)
    (d / "bomb.png").write_bytes(_png_header(20000, 20000))
    (d / "not.json").write_text("this is not JSON\n")
    (d / "list.json").write_text("[1, 2]\n")
    (d / "unkeyed.jsonl").write_text('{"status": "ok", "result": {}}\n')
    (d / "garbage.jsonl").write_text("garbage\nmore garbage\n")
    for name, mangle in (("truncated", lambda b: b[:len(b) // 2]), ("corrupt", lambda b: b"\0" * 1000)):
        folder = d / name
        folder.mkdir()
        for f in Path(la.DEFAULT_MODEL).iterdir():
            (folder / f.name).write_bytes(mangle(f.read_bytes()) if f.name == "model.safetensors" else f.read_bytes())
    folders = {"nonutf8": b'"caf\xe9"', "surrogate": b'"\\ud800 what?"', "imagetag": b'"<image> what?"'}
    paths = {k: str(_data_folder(d / k, image, v)) for k, v in folders.items()}
    (d / "nodata").mkdir()
    specs = {
        "unknown_task": SPEC.replace("synthetic-textvqa", "synthetic-textvqq"),
        "measure_typo": SPEC + "[measure_options]\nfixed_new_token = true\n",
        "measure_value": SPEC + "[measure_options]\nflop_counter = 'bogus'\n",
        "measure_owned": SPEC + "[measure_options]\nbatch_size = 2\n",
        "backend_typo": SPEC + "[backend_options.cpu]\nthread = 2\n",
        "backend_unknown": SPEC + "[backend_options.cpux]\nthreads = 2\n",
        "source_no_dataset": SPEC.replace("synthetic-textvqa", "textvqa")
        + f"[task_sources]\ntextvqa = '{d / 'nodata'}'\n",
        "source_synthetic": SPEC + f"[task_sources]\nsynthetic-textvqa = '{d / 'nodata'}'\n",
        "source_unused": SPEC + f"[task_sources]\ncoco = '{d / 'nodata'}'\n",
        "grid_empty": SPEC + "grid = []\n",
        "zero_tokens": SPEC + "max_new_tokens = 0\n",
        "huge_image": SPEC + "img_sizes = [10000]\n",
        "tiny_image": SPEC + "img_sizes = [7]\n",
        # the second grid's mistake must fail before the first grid's point runs
        "late_mistake": SPEC + "[[grid]]\n[[grid]]\ntasks = ['nosuch']\n",
    }
    for name, text in specs.items():
        (d / f"{name}.toml").write_text(text)
        paths[f"spec_{name}"] = str(d / f"{name}.toml")
    return {"image": str(image), "dir": str(d), **paths,
            **{k: str(d / f) for k, f in (("bomb", "bomb.png"), ("not_json", "not.json"), ("list_json", "list.json"),
                                          ("unkeyed", "unkeyed.jsonl"), ("garbage", "garbage.jsonl"),
                                          ("truncated", "truncated"), ("corrupt", "corrupt"))}}


GEN = ["generate", "--image", "{image}", "--prompt", "What is written?"]
MEASURE = ["measure", "--task", "synthetic-textvqa", "--limit", "1"]

# (argv, a piece of the message, loads a model first). {name} is replaced by the file of that name.
CLI_CASES = [
    # tracebacks before
    (["generate", "--image", "{bomb}", "--prompt", "hi"], "too large to decode safely", False),
    (["generate", "--image", "{image}", "--prompt", "caf\udce9"], "not valid UTF-8", False),
    (["generate", "--image", "{image}", "--prompt", "<image> What is written?"], "image placeholder", False),
    (GEN + ["--attention", "bogus"], "unknown attention 'bogus'", False),
    (MEASURE + ["--img-size", "7"], "smaller than one 16-px patch", False),
    (["profile", "--img-size", "7", "--batch-sizes", "1"], "smaller than one", False),
    (MEASURE[:-1] + ["-1"], "must be a positive whole number", False),
    (["flops", "--batch-size", "0"], "must be a positive whole number", False),
    (["flops", "--image-size", "7"], "smaller than one 14-px patch", False),
    (["profile", "--repeats", "0"], "must be a positive whole number", False),
    (["profile", "--batch-sizes", "1,0"], "--batch-sizes must be positive integers", False),
    (MEASURE + ["--reference", "{dir}/missing.json"], "missing.json not found", False),
    (MEASURE + ["--reference", "{not_json}"], "cannot read it as JSON", False),
    (MEASURE + ["--reference", "{list_json}"], "not an object", False),
    (["report", "{not_json}", "--out", "{dir}/r1"], "cannot read it as JSON", False),
    (["report", "{list_json}", "--out", "{dir}/r2"], "not an object", False),
    (["report", "{garbage}", "--out", "{dir}/r3"], "line 1 is not a JSON object", False),
    (GEN + ["--model", "{truncated}"], "corrupt or truncated", True),
    (GEN + ["--model", "{corrupt}"], "corrupt or truncated", True),
    # hangs before
    (MEASURE + ["--img-size", "10000"], "max_position_embeddings", False),
    (["flops", "--image-size", "10000"], "use 14 to 895 px", False),
    # silent wrong values before
    (MEASURE + ["--max-new-tokens", "0"], "must be a positive whole number", False),
    (GEN + ["--max-new-tokens", "0"], "must be a positive whole number", False),
    (["flops", "--text-tokens", "-5"], "must be a whole number, 0 or more", False),
    (GEN[:-1] + ["x" * 100_000], "max_position_embeddings", True),
    (MEASURE + ["--warmup", "-1"], "must be a whole number, 0 or more", False),
    (MEASURE + ["--split", "train"], "has no split or source", False),
    (MEASURE + ["--source", "{dir}"], "has no split or source", False),
    (MEASURE + ["--batch-size", "2.5"], "must be a whole number, got '2.5'", False),
    (MEASURE + ["--max-input-len", "0"], "must be a positive whole number", False),
    (["measure", "--data", "{nonutf8}"], "not UTF-8 text", False),
    (["measure", "--data", "{surrogate}"], "not valid UTF-8", False),
    (["measure", "--data", "{imagetag}"], "image placeholder", False),
    (["report", "{dir}/r1", "--out", "{dir}/r4", "--latency-budget", "-1"], "positive finite number", False),
    (["eagle-train", "--out", "{dir}/head", "--samples", "0"], "must be a positive whole number", False),
    (["eagle-train", "--out", "{dir}/head", "--split", "train"], "has no split or source", False),
    (GEN + ["--backend", "eager", "--device", "bogus"], "unknown device 'bogus'", False),
    (GEN + ["--dtype", "int7"], "unknown dtype 'int7'", False),
    (GEN + ["--loop", "nope"], "invalid choice: 'nope'", False),
    (GEN + ["--device-map", "nope"], "unknown device_map 'nope'", True),  # checked in load_model, before weights
    (["generate", "--image", "{dir}", "--prompt", "hi"], "cannot read image", False),
    (["generate", "--image", "{dir}/missing.png", "--prompt", "hi"], "image not found", False),
    (GEN + ["--model", "{dir}/no-model"], "model folder not found", True),  # likewise
    (["measure", "--task", "nosuch"], "unknown task 'nosuch'", False),
    (["profile", "--task", "nosuch"], "unknown task 'nosuch'", False),
    (["eagle-train", "--out", "{dir}/head", "--task", "nosuch"], "unknown task 'nosuch'", False),
    (["measure", "--data", "{dir}/no-data"], "data folder not found", False),
    (["sweep", "{dir}/missing.toml", "--out", "{dir}/sweep-missing"], "sweep spec not found", False),
    # unclear messages before
    (GEN + ["--device", "cuda"], "the 'cpu' backend runs on the CPU only", False),
    (["report", "{unkeyed}", "--out", "{dir}/r5"], "is not a sweep record", False),
    (["demo", "--backends", "nosuch"], "unknown backend 'nosuch'", False),
    (["demo", "--backends", "cpu+int9"], "unknown quantize mode", False),
    *[(["sweep", "{spec_%s}" % name, "--out", "{dir}/sweep-%s" % name], message, False) for name, message in (
        ("unknown_task", "unknown task 'synthetic-textvqq'"),
        ("measure_typo", "unknown option 'fixed_new_token'; did you mean 'fixed_new_tokens'?"),
        ("measure_value", "flop_counter must be one of"),
        ("measure_owned", "which the spec's field 'batch_sizes' sets"),
        ("backend_typo", "unknown option 'thread'; did you mean 'threads'?"),
        ("backend_unknown", "unknown backend 'cpux'"),
        ("source_no_dataset", "is not a dataset folder"),
        ("source_synthetic", "has no split or source"),
        ("source_unused", "names task 'coco', which no grid measures"),
        ("grid_empty", "field 'grid' is empty"),
        ("zero_tokens", "'max_new_tokens' must be at least 1"),
        ("huge_image", "max_position_embeddings"),
        ("tiny_image", "smaller than one"),
        ("late_mistake", "unknown task 'nosuch'"),
    )],
]


def _argv(argv: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in argv]


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was refused")


@pytest.mark.parametrize("argv, message, loads", CLI_CASES, ids=[" ".join(c[0])[:60] for c in CLI_CASES])
def test_cli_refuses_in_one_line(argv, message, loads, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if not loads:
        monkeypatch.setattr("llava_accel.backends.base.load_model", _no_model)
    else:  # in a process of its own the CLI turns transformers' progress bars off before importing it; here it is late
        from transformers.utils import logging

        monkeypatch.setattr(logging, "_tqdm_active", False)
    try:
        code = main(_argv(argv, files))
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert message in captured.err, captured.err
    assert "error" in captured.err


SUBPROCESS_CASES = [  # the same refusals as the user sees them: exit code and stderr of a real process
    (["measure", "--task", "synthetic-textvqa", "--limit", "-1"], "must be a positive whole number"),
    ([b"generate", b"--image", b"{image}", b"--prompt", b"caf\xe9"], "not valid UTF-8"),
    (["generate", "--image", "{bomb}", "--prompt", "hi"], "too large to decode safely"),
    (["report", "{not_json}", "--out", "{dir}/r6"], "cannot read it as JSON"),
]


@pytest.mark.parametrize("argv, message", SUBPROCESS_CASES, ids=[str(c[0][0]) for c in SUBPROCESS_CASES])
def test_cli_process_exits_2_with_one_line(argv, message, files):
    args = [a.replace(b"{image}", files["image"].encode()) if isinstance(a, bytes) else a.format(**files)
            for a in argv]
    proc = subprocess.run([sys.executable, "-m", "llava_accel", *args], capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and message in err, err


@pytest.fixture(scope="module")
def backend():
    return la.load_backend("cpu")


@pytest.fixture(scope="module")
def image():
    return synthetic_samples("synthetic-textvqa", 1)[0].image


def _measure(backend, **kwargs):
    return la.measure(backend, synthetic_samples("synthetic-textvqa", 1), warmup=0, count_flops=False,
                      idle_seconds=0, **kwargs)


# (call, the error class). Each call gets the loaded tiny backend and an image.
API_CASES = {
    "generate nothing": (lambda b, i: b.generate(images=[], prompts=[]), OptionError),
    "generate prompt None": (lambda b, i: b.generate([i], [None]), OptionError),
    "generate prompt bytes": (lambda b, i: b.generate([i], [b"what?"]), OptionError),
    "generate prompts a str": (lambda b, i: b.generate([i], "what?"), OptionError),
    "generate image not a list": (lambda b, i: b.generate(i, ["what?"]), la.ImageError),
    "generate image not an image": (lambda b, i: b.generate([42], ["what?"]), la.ImageError),
    "generate lone surrogate": (lambda b, i: b.generate([i], ["caf\udce9"]), OptionError),
    "generate <image> typed": (lambda b, i: b.generate([i], ["<image> what?"]), OptionError),
    "generate 100k characters": (lambda b, i: b.generate([i], ["x" * 100_000]), PromptTooLongError),
    "generate max_new_tokens=0": (lambda b, i: b.generate([i], ["what?"], max_new_tokens=0), OptionError),
    "generate max_new_tokens=2.0": (lambda b, i: b.generate([i], ["what?"], max_new_tokens=2.0), OptionError),
    "generate img_size=7": (lambda b, i: b.generate([i], ["what?"], img_size=7), OptionError),
    "generate img_size=10000": (lambda b, i: b.generate([i], ["what?"], img_size=10000), OptionError),
    "measure max_new_tokens=0": (lambda b, i: _measure(b, max_new_tokens=0), OptionError),
    "measure batch_size=2.0": (lambda b, i: _measure(b, batch_size=2.0), OptionError),
    "measure limit=-1": (lambda b, i: _measure(b, limit=-1), OptionError),
    "measure warmup=-1": (lambda b, i: la.measure(b, synthetic_samples("synthetic-textvqa", 1), warmup=-1),
                          OptionError),
    "measure checkpoint in a missing folder": (lambda b, i: _measure(b, checkpoint="/no/such/dir/m.json"),
                                               OutputPathError),
    "measure a prompt with <image>": (lambda b, i: la.measure(b, [la.Sample(i, "<image> hi")]), OptionError),
    "load_task limit=-1": (lambda b, i: la.load_task("synthetic-coco", limit=-1), OptionError),
    "load_task split on a synthetic task": (lambda b, i: la.load_task("synthetic-coco", split="train"),
                                            la.DatasetError),
    "load_backend attention='bogus'": (lambda b, i: la.load_backend("cpu", attention="bogus"), OptionError),
    "load_backend cpu on cuda": (lambda b, i: la.load_backend("cpu", device="cuda"), OptionError),
    "load_backend threads=0": (lambda b, i: la.load_backend("cpu", threads=0), OptionError),
    "load_backend device='bogus'": (lambda b, i: la.load_backend("eager", device="bogus"), OptionError),
    "measure an unknown task": (lambda b, i: _measure_task(b, "nosuch"), la.DatasetError),
    "from_json missing": (lambda b, i: la.MeasureResult.from_json("/no/such.json"), ResultsFileError),
    "flops batch 0": (lambda b, i: _flops(batch_size=0), OptionError),
    "flops text tokens -5": (lambda b, i: _flops(text_tokens=-5), OptionError),
    "flops image size 7": (lambda b, i: _flops(image_size=7), OptionError),
    "profile repeats=0": (lambda b, i: _profile(b, repeats=0), OptionError),
    "profile batch size 0": (lambda b, i: _profile(b, batch_sizes=[0]), OptionError),
}


def _measure_task(backend, task):
    return la.measure(backend, task, limit=1)


def _flops(batch_size=1, text_tokens=10, image_size=None):
    from llava_accel.metrics.flops import architecture_flops
    from llava_accel.models.architecture import load_config

    return architecture_flops(load_config("llava-hf/llava-1.5-7b-hf"), batch_size, text_tokens,
                              image_size=image_size)


def _profile(backend, repeats=1, batch_sizes=(1,)):
    from llava_accel.study.profile import profile_layers

    return profile_layers(backend, synthetic_samples("synthetic-textvqa", 1), batch_sizes=batch_sizes,
                          repeats=repeats)


@pytest.mark.parametrize("name", API_CASES)
def test_api_raises_llava_accel_error(name, backend, image):
    call, error = API_CASES[name]
    with pytest.raises(error) as caught:
        call(backend, image)
    assert isinstance(caught.value, LlavaAccelError) and "\n" not in str(caught.value)


def test_api_corrupt_weights_is_one_line(files):
    with pytest.raises(la.ModelNotFoundError, match="corrupt or truncated"):
        la.load_backend("cpu", model=files["truncated"])


# -- images of more than 8 bits are scaled, not clipped -------------------------------------------------------------
def _reloaded(array: np.ndarray, fmt: str, tmp_path: Path) -> Image.Image:
    path = tmp_path / f"img.{fmt.lower()}"
    Image.fromarray(array).save(path, fmt)
    return la.preprocessing.load_image(path)


@pytest.mark.parametrize("array, fmt", [
    (np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16), "PNG"),  # 16-bit grey
    (np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "TIFF"),  # 0-1 float
    (np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64), "TIFF"),  # 0-255 float
])
def test_high_depth_images_keep_their_grey_levels(array, fmt, tmp_path):
    """A ramp from black to white stays a ramp: PIL's convert would clip 16-bit to white and 0-1 floats to black."""
    rgb = np.asarray(_reloaded(array, fmt, tmp_path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(np.linspace(0, 255, 64 * 64)).reshape(64, 64)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_a_dark_16_bit_image_stays_dark(tmp_path):
    rgb = np.asarray(_reloaded(np.full((8, 8), 200, np.uint16), "PNG", tmp_path))
    assert (rgb == 1).all()  # 200 / 257 rounds to 1: dark, as in the file (not 200 of 255)


def test_img_size_limits_come_from_the_context():
    from llava_accel.image_size import image_size_limits, image_tokens
    from llava_accel.models.architecture import load_config

    config = load_config("llava-hf/llava-1.5-7b-hf")
    low, high = image_size_limits(config)
    assert low == config.vision_config.patch_size
    ctx = config.text_config.max_position_embeddings
    assert image_tokens(config, high) < ctx <= image_tokens(config, high + 1)


def test_nonsense_prefetch_setting_is_refused_before_the_model_loads(files, capsys, monkeypatch):
    monkeypatch.setenv("LLAVA_ACCEL_PREFETCH", "sometimes")
    monkeypatch.setattr("llava_accel.backends.base.load_model", _no_model)
    assert main(_argv(GEN, files)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LLAVA_ACCEL_PREFETCH='sometimes' is not one of nta, t0, off" in err, err
