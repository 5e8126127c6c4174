"""Named tasks: loaders on every local layout, byte-exact prompts, the hub path, one-line errors, skipped images."""

import json
import shutil
import time
from pathlib import Path

import pytest

import llava_accel as la
from llava_accel.errors import DatasetError
from llava_accel.tasks import TASKS, load_task, native_metric, synthetic_samples
from llava_accel.tasks.prompts import PROMPT_BUILDERS

FIXTURES = Path(__file__).parent / "fixtures"
LAYOUTS = ["folder", "disk"]
SQA = "\nAnswer with the option's letter from the given choices directly."
VQA = "\nAnswer the question using a single word or phrase."

# the first fixture row of each task, prompt byte for byte as lmms-eval builds it
EXPECTED_FIRST = {
    "coco": ("coco/val/000000000100.jpg", "Provide a one-sentence caption for the provided image.",
             ["A red square on a white background.", "A small red box.", "A red square.", "A red block on white.",
              "The square is red."]),
    "scienceqa": ("scienceqa/test/0",
                  "Context: The picture shows one square.\nWhich color is the square?\nA. red\nB. green\nC. blue" + SQA,
                  ["A"]),
    "textvqa": ("textvqa/validation/34600", "What is the brand of this camera?" + VQA,
                ["nikon", "Nikon", "nikon", "nikon", "NIKON", "nikon d3200", "nikon", "nikon", "nikon", "the nikon"]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_loader_on_each_layout(task, layout):
    samples = load_task(task, source=FIXTURES / task / layout)
    assert len(samples) == 4 and samples.skipped == []
    first = samples[0]
    assert (first.id, first.prompt, first.references) == EXPECTED_FIRST[task]
    assert all(s.task == task and s.image.mode == "RGB" and s.image.size == (24, 24) for s in samples)
    assert len({s.id for s in samples}) == 4
    assert [s.prompt for s in samples] == [TASKS[task].prompt(s.fields) for s in samples]
    assert len(load_task(task, source=FIXTURES / task / layout, limit=2)) == 2


def test_layouts_give_identical_samples():
    for task in TASKS:
        folder, disk = (load_task(task, source=FIXTURES / task / layout) for layout in LAYOUTS)
        assert [(s.id, s.prompt, s.references, s.fields, s.image.tobytes()) for s in folder] == \
               [(s.id, s.prompt, s.references, s.fields, s.image.tobytes()) for s in disk]


def test_prompts_byte_exact():
    sqa = load_task("scienceqa", source=FIXTURES / "scienceqa" / "folder")
    assert sqa[1].prompt == "Is the square green?\nA. no\nB. yes" + SQA  # no hint: no "Context:" line
    assert sqa[3].prompt == ("Context: Look at the shape.\nWhat is drawn?\nA. a circle\nB. a triangle\nC. a line\n"
                             "D. a square\nE. a star" + SQA)
    assert [s.references[0] for s in sqa] == ["A", "B", "D", "D"]
    tvqa = load_task("textvqa", source=FIXTURES / "textvqa" / "folder")
    # lmms-eval shows question.capitalize(), which also lower-cases the rest ("NASA" -> "nasa")
    assert tvqa[3].prompt == "What is written on the nasa shirt?" + VQA
    assert PROMPT_BUILDERS["caption"]({}) == "Provide a one-sentence caption for the provided image."


@pytest.mark.parametrize("task, twin", [("coco", "synthetic-coco"), ("textvqa", "synthetic-textvqa"),
                                        ("scienceqa", "synthetic-scienceqa")])
def test_synthetic_twins_share_prompt_and_metric(task, twin):
    samples = synthetic_samples(twin, 20, seed=3)
    assert all(s.prompt == TASKS[task].prompt(s.fields) for s in samples)
    perfect = native_metric(samples, [s.references[0] for s in samples])
    assert perfect and all(v > 0 for v in perfect.values())
    real = load_task(task, source=FIXTURES / task / "folder")
    # METEOR (a Java jar that takes seconds to start) scores the named task only
    assert native_metric(real, [s.references[0] for s in real], meteor=False).keys() == perfect.keys()


def test_native_metric_values_on_fixtures():
    tvqa = load_task("textvqa", source=FIXTURES / "textvqa" / "folder")
    # row 2: answers 2 x 'two' + 7 x '2' + '3' -> all '2' after normalisation but '3': 9 of 10 -> 1.0;
    # the others answered wrong -> 0
    assert native_metric(tvqa, ["x", "x", "Two", "x"]) == {"vqa_accuracy": pytest.approx(0.25)}
    # lmms-eval 0.7.3's llava_hf never applies the yaml's `until: ["ASSISTANT:"]`: the whole answer is scored
    assert native_metric(tvqa, ["nikon ASSISTANT: canon", "stop", "2", "nasa"]) == {"vqa_accuracy": 0.75}
    sqa = load_task("scienceqa", source=FIXTURES / "scienceqa" / "folder")
    assert native_metric(sqa, ["A", "(B)", "The answer is C", "a square"]) == {
        "accuracy": 0.75, "lmms_eval_exact_match": 0.25}


def test_hub_source_goes_through_datasets(monkeypatch):
    """No hub here: stand the fixture in for the download and check what would be asked of the hub."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.load_from_disk(str(FIXTURES / "scienceqa" / "disk"))[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    samples = load_task("scienceqa", limit=3)
    assert calls == [("lmms-lab-encoder/ScienceQA", "ScienceQA-IMG", "test")]  # lmms-eval 0.7.3's id
    assert len(samples) == 3 and samples.source == "lmms-lab-encoder/ScienceQA"
    load_task("scienceqa", source="someone/ScienceQA-copy", split="test")
    assert calls[-1] == ("someone/ScienceQA-copy", "ScienceQA-IMG", "test")


@pytest.mark.parametrize("offline", [True, False])
def test_hub_falls_back_to_the_former_id(monkeypatch, offline):
    """The current id not found (not cached offline; not on the hub online): the former id is read and recorded."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from llava_accel.models import loading

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append(path)
        if path.startswith("lmms-lab-encoder/"):
            raise (FileNotFoundError("not in the cache") if offline else DatasetNotFoundError(f"{path} not found"))
        return datasets.load_from_disk(str(FIXTURES / "scienceqa" / "disk"))[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(loading, "hub_reachable", lambda: not offline)
    samples = load_task("scienceqa", limit=2)
    assert calls == ["lmms-lab-encoder/ScienceQA", "lmms-lab/ScienceQA"] and samples.source == "lmms-lab/ScienceQA"
    calls.clear()  # an explicit id is read as given, without a fallback
    with pytest.raises(DatasetError, match="lmms-lab-encoder/ScienceQA") as err:
        load_task("scienceqa", source="lmms-lab-encoder/ScienceQA", limit=2)
    assert calls == ["lmms-lab-encoder/ScienceQA"] and "\n" not in str(err.value)


def test_offline_hub_fails_fast_in_one_line():
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_task("textvqa", limit=2)
    assert time.perf_counter() - start < 15
    msg = str(err.value)
    assert "\n" not in msg and "lmms-lab-encoder/textvqa" in msg and "save_to_disk" in msg and "offline" in msg
    assert "also tried lmms-lab/textvqa" in msg


def _copy(task, layout, tmp_path):
    return Path(shutil.copytree(FIXTURES / task / layout, tmp_path / f"{task}-{layout}"))


def test_missing_and_malformed_sources(tmp_path):
    with pytest.raises(DatasetError, match="not found: /no/such/folder"):
        load_task("coco", source="/no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no samples.jsonl"):
        load_task("coco", source=tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown task 'cocoa'.*coco, scienceqa"):
        load_task("cocoa")

    folder = _copy("textvqa", "folder", tmp_path)
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    del rows[1]["answers"]
    (folder / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DatasetError, match=r"samples.jsonl:2: no field 'answers'"):
        load_task("textvqa", source=folder)
    (folder / "samples.jsonl").write_text('{"image": "images/0.png", "question": "q", "answers": []}\n{oops\n')
    with pytest.raises(DatasetError, match=r"samples.jsonl:2: not valid JSON"):
        load_task("textvqa", source=folder)
    good = [json.dumps(r) for r in rows if "answers" in r]
    (folder / "samples.jsonl").write_text(good[0] + "\n\n" + "\n".join(good[1:]) + "\n\n")  # blank lines are skipped
    assert len(load_task("textvqa", source=folder)) == 3 and len(load_task("textvqa", source=folder, limit=2)) == 2


def test_save_to_disk_errors(tmp_path):
    import datasets

    with pytest.raises(DatasetError, match="has splits val, not 'test'"):
        load_task("coco", source=FIXTURES / "coco" / "disk", split="test")
    ds = datasets.load_from_disk(str(FIXTURES / "textvqa" / "disk"))["validation"].remove_columns(["answers"])
    ds.save_to_disk(str(tmp_path / "noanswers"))
    with pytest.raises(DatasetError, match="has no column 'answers'"):
        load_task("textvqa", source=tmp_path / "noanswers")


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    folder = _copy("textvqa", "folder", tmp_path)
    (folder / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (folder / "images" / "2.png").unlink()
    with pytest.warns(UserWarning, match="skipped 2 of 4"):
        samples = load_task("textvqa", source=folder)
    assert [s.id for s in samples] == ["textvqa/validation/34600", "textvqa/validation/34603"]
    assert [i for i, _ in samples.skipped] == ["textvqa/validation/34601", "textvqa/validation/34602"]
    assert "not found" in samples.skipped[1][1]


def test_corrupt_image_in_a_saved_dataset_is_skipped(tmp_path):
    import datasets

    ds = datasets.load_from_disk(str(FIXTURES / "coco" / "disk"))["val"].cast_column("image", datasets.Image(decode=False))
    broken = ds.map(lambda row, i: {"image": {"bytes": b"garbage" if i == 0 else row["image"]["bytes"], "path": None}},
                    with_indices=True, keep_in_memory=True)  # no cache file inside the fixture
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        samples = load_task("coco", source=tmp_path / "broken", split="val")
    assert len(samples) == 3 and samples.skipped[0][0] == "coco/val/000000000100.jpg"


def test_load_task_is_exported():
    assert la.load_task is load_task


def test_cli_measure_on_a_named_task_source(capsys):
    from llava_accel.cli import main

    rc = main(["measure", "--task", "textvqa", "--source", str(FIXTURES / "textvqa" / "disk"), "--limit", "2",
               "--max-new-tokens", "2", "--warmup", "0", "--no-flops", "--img-size", "32", "--max-input-len", "100"])
    out = capsys.readouterr().out
    assert rc == 0 and "textvqa: 2 samples" in out
    assert "max_input_len 100 (0 prompts cut), 4 image tokens per image (img_size 32)" in out
    assert main(["measure", "--task", "textvqa", "--limit", "2"]) == 2  # offline, no local copy: one line, no model
    err = capsys.readouterr().err.strip()
    assert err.startswith("llava-accel: error: dataset 'lmms-lab-encoder/textvqa'") and "\n" not in err
