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


def test_version(capsys):
    import llava_accel

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"llava-accel {llava_accel.__version__}"


def test_help_describes_every_command_and_shows_defaults(capsys):
    from llava_accel.cli import COMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and all(name in top for name in COMMANDS)
    for name, (_, summary, _) in COMMANDS.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert summary[:1].upper() + summary[1:] in text
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, shown in (("--backend BACKEND", "(default: cpu)"), ("--batch-size BATCH_SIZE", "(default: 1)"),
                        ("--seed SEED", "(default: 0)")):
        assert shown in text.split(flag, 2)[2].split(" --")[0], flag  # the option's own help line, not usage


def test_backends_as_csv_and_json(capsys):
    import json

    assert main(["backends", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "name,available,why_not,package" and any(line.startswith("cpu,True,") for line in lines)
    assert main(["backends", "--format", "json"]) == 0
    assert {"name": "cpu", "available": True, "why_not": None, "package": "llava-accel"} in json.loads(
        capsys.readouterr().out)
