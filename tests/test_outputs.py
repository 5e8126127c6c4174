"""Output paths: every command's output path checked before any model loads (one line, exit 2), and a result whose
place fails during the run saved elsewhere, never lost, never leaving ``.tmp`` behind."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava_accel.cli import main
from llava_accel.measure import measure
from llava_accel.outputs import OutputPathError, check_file, check_folder, save, write_atomic
from llava_accel.tasks import synthetic_samples
from tests.test_measure import SleepingBackend

ROOT = Path(__file__).parents[1]
SPEC = 'name = "t"\nbackends = ["cpu"]\ntasks = ["synthetic-textvqa"]\nbatch_sizes = [1]\nlimit = 2\n'

# kind -> (the bad path under tmp, what the one-line message says); "blocker" is a file that exists
FILE_CASES = {
    "missing folder": ("nope/result.json", "does not exist; create it"),
    "a folder": (".", "is a folder; pass a file path"),
    "under a file": ("blocker/result.json", "blocker is a file, not a folder"),
    "unwritable place": ("/proc/llava-accel-result.json", "cannot create files in /proc"),
}
FOLDER_CASES = {
    "a file": ("blocker", "is a file, not a folder"),
    "under a file": ("blocker/sub", "blocker is a file, so no folder can be made under it"),
    "unwritable place": ("/proc/llava-accel-out", "cannot create files in /proc"),
}
# command -> (argv with PATH for the output path, file or folder output)
COMMANDS = {
    "measure --json": (["measure", "--task", "synthetic-textvqa", "--limit", "2", "--json", "PATH"], FILE_CASES),
    "profile --json": (["profile", "--batch-sizes", "1", "--json", "PATH"], FILE_CASES),
    "sweep --out": (["sweep", "SPEC", "--out", "PATH"], FOLDER_CASES),
    "report --out": (["report", "SPEC", "--out", "PATH"], FOLDER_CASES),
    "demo --out": (["demo", "--backends", "cpu", "--no-quantized", "--out", "PATH"], FOLDER_CASES),
    "eagle-train --out": (["eagle-train", "--out", "PATH"], FOLDER_CASES),
}
CASES = [(command, kind) for command, (_, kinds) in COMMANDS.items() for kind in kinds]


@pytest.fixture(autouse=True)
def _private_temp(tmp_path_factory, monkeypatch):
    """Fallback files go to a temporary folder of this test run, not the machine's /tmp."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path_factory.mktemp("fallback")))


def _setup(tmp_path, command, kind):
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "spec.toml").write_text(SPEC)
    argv, kinds = COMMANDS[command]
    relative, message = kinds[kind]
    path = str(tmp_path / relative) if not relative.startswith("/") else relative
    return [{"PATH": path, "SPEC": str(tmp_path / "spec.toml")}.get(a, a) for a in argv], path, message


def _nothing_written(tmp_path, path):
    """Nothing to lose: the command stopped before any work, and left nothing behind (no .tmp, no probe, no
    folder)."""
    assert sorted(os.listdir(tmp_path)) == ["blocker", "spec.toml"]
    assert not Path(path).is_dir() or Path(path) == tmp_path
    assert not any(name.endswith(".tmp") or "probe" in name for _, _, names in os.walk(tmp_path) for name in names)


@pytest.mark.parametrize("command, kind", CASES)
def test_bad_output_path_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch, command, kind):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr("llava_accel.backends.base.load_model", no_model)
    argv, path, message = _setup(tmp_path, command, kind)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("llava-accel: error: ") and err.count("\n") == 1 and message in err, err
    assert out == ""
    _nothing_written(tmp_path, path)


@pytest.mark.parametrize("command, kind", [(c, list(COMMANDS[c][1])[i % len(COMMANDS[c][1])])
                                           for i, c in enumerate(COMMANDS)])
def test_bad_output_path_from_the_command_line(tmp_path, command, kind):
    """The real entry point, one case per command (the kinds in turn): exit code 2, one line on stderr."""
    argv, path, message = _setup(tmp_path, command, kind)
    run = subprocess.run([sys.executable, "-m", "llava_accel", *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
    assert run.stdout == ""
    _nothing_written(tmp_path, path)


@pytest.mark.parametrize("kind", FILE_CASES)
def test_measure_api_checks_its_checkpoint_before_the_first_batch(tmp_path, kind):
    (tmp_path / "blocker").write_text("a file")
    relative, message = FILE_CASES[kind]
    backend = SleepingBackend()
    with pytest.raises(OutputPathError, match=message) as err:
        measure(backend, synthetic_samples("synthetic-coco", 2), checkpoint=tmp_path / relative)
    assert backend.calls == 0 and "\n" not in str(err.value)


def test_offload_folder_is_checked_before_the_model_loads(tmp_path):
    from llava_accel.models.loading import load_model

    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OutputPathError, match="offload folder .* is a file"):
        load_model(None, None, None, device_map="auto", offload_folder=str(tmp_path / "blocker"))


def test_good_paths_pass_and_a_missing_output_folder_is_created_later(tmp_path):
    assert check_file(tmp_path / "r.json") == tmp_path / "r.json"
    assert check_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert os.listdir(tmp_path) == []  # the check itself creates nothing


# -- the place fails during the run: the result is saved elsewhere --------------------------------------------------
BREAKERS = {
    "folder removed": lambda path: shutil.rmtree(path.parent),
    "folder replaced by a file": lambda path: (shutil.rmtree(path.parent), path.parent.write_text("file")),
    "a folder where the file goes": lambda path: path.mkdir(),
}


class BreakingBackend(SleepingBackend):
    """Breaks the output path while its second batch runs (after the checkpoint was checked)."""

    def __init__(self, path, breaker):
        super().__init__(prefill_s=0, step_s=0, slow_calls=0)
        self.path, self.breaker = path, breaker

    def generate(self, *args, **kwargs):
        if self.calls == 1:
            self.breaker(self.path)
        return super().generate(*args, **kwargs)


@pytest.mark.parametrize("breaker", BREAKERS)
def test_result_saved_elsewhere_when_its_place_fails_during_the_run(tmp_path, capsys, breaker):
    path = tmp_path / "out" / "result.json"
    path.parent.mkdir()
    m = measure(BreakingBackend(path, BREAKERS[breaker]), synthetic_samples("synthetic-coco", 3), max_new_tokens=2,
                warmup=0, count_flops=False, checkpoint=path)
    err = capsys.readouterr().err
    assert f"cannot write the result to {path}" in err and err.count("\n") == 1
    saved = Path(err.split("saved it to ")[1].split(" instead")[0])
    assert json.loads(saved.read_text())["predictions"] == [p.__dict__ for p in m.predictions]
    assert len(m.predictions) == 3 and not Path(f"{path}.tmp").exists()


def test_cli_prints_the_table_and_says_where_the_result_went(tmp_path, capsys, monkeypatch):
    path = tmp_path / "out" / "result.json"
    path.parent.mkdir()
    monkeypatch.setattr("llava_accel.registry.load_backend",
                        lambda *a, **k: BreakingBackend(path, BREAKERS["folder removed"]))
    assert main(["measure", "--task", "synthetic-coco", "--limit", "3", "--warmup", "0", "--no-flops",
                 "--max-new-tokens", "2", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    saved = Path(err.split("saved it to ")[1].split(" instead")[0])
    assert "verdict" in out and f"wrote {saved}" in err
    assert len(json.loads(saved.read_text())["predictions"]) == 3


def test_write_atomic_leaves_no_tmp_behind(tmp_path):
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, "text")
    assert os.listdir(tmp_path.parent).count(f"{tmp_path.name}.tmp") == 0


def test_save_falls_back_to_a_temporary_folder_keeping_the_name(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file")
    where = save(lambda p: write_atomic(p, "text"), tmp_path / "blocker" / "profile.json", "the profile")
    assert where.name == "profile.json" and where.read_text() == "text"
    assert f"saved it to {where} instead" in capsys.readouterr().err
