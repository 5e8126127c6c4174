"""The README's first examples, run exactly as written (parsed out of README.md, so editing it re-tests it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands(prefix: str) -> list[str]:
    """Every command line of the README's bash blocks that starts with ``prefix`` (continuations joined)."""
    lines = [c for b in blocks("bash") for c in b.replace("\\\n", " ").splitlines()]
    return [c for c in lines if c.startswith(prefix)]


def run_as_written(command: str) -> subprocess.CompletedProcess:
    """bash runs the line; ``llava-accel`` is this interpreter's package (installed or not)."""
    script = f'llava-accel() {{ "{sys.executable}" -m llava_accel "$@"; }}\n{command}\n'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_first_python_example_answers_right(monkeypatch, capsys):
    code = blocks("python")[0]
    assert 'load_backend("cpu")' in code and "word.png" in code
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.split()[0] == "lamp"  # examples/images/word.png says "lamp"


@pytest.mark.parametrize("command", commands("llava-accel generate --backend cpu"))
def test_the_generate_example_answers_right(command):
    done = run_as_written(command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "lamp"


def test_the_readme_has_a_cpu_generate_example_and_lists_backends():
    assert commands("llava-accel generate --backend cpu")
    (command,) = commands("llava-accel backends")
    done = run_as_written(command)
    assert done.returncode == 0, done.stderr
    assert any(line.split()[:2] == ["cpu", "yes"] for line in done.stdout.splitlines())
