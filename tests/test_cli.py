"""The command line: a table of backends, an answer, and one-line errors with a non-zero exit."""

import pytest

from llava_accel.cli import main
from llava_accel.tasks import synthetic_samples


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "word.png"
    synthetic_samples("synthetic-textvqa", 1)[0].image.save(path)
    return path


def test_backends_table(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "available", "why", "not", "package"]
    assert any(line.split()[:2] == ["cpu", "yes"] for line in lines[1:])


def test_generate_prints_answer(capsys, image_file):
    assert main(["generate", "--image", str(image_file), "--prompt", "What word is written in the image?",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""


@pytest.mark.parametrize("args, message", [
    (["--backend", "nope"], "unknown backend 'nope'; known backends:"),
    (["--image", "/no/such.png"], "image not found: /no/such.png"),
    (["--model", "./missing-model"], "model folder not found: ./missing-model"),
])
def test_errors_are_one_line(capsys, image_file, args, message):
    base = {"--image": str(image_file), "--prompt": "hi"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["generate"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-accel: error: ") and message in err and err.count("\n") == 1
