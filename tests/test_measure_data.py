"""The generic local-folder loader (``--data DIR``): samples, skipped images, one-line errors."""

import json

import pytest

from llava_accel.errors import DatasetError
from llava_accel.tasks import load_task, synthetic_samples
from llava_accel.tasks.folder import load_folder


def _write(folder, rows, images=2):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(synthetic_samples("synthetic-coco", images)):
        s.image.save(folder / "img" / f"{i}.png")
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in rows))
    return folder


def test_loads_samples_and_counts_bad_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "corrupt.png").write_bytes(b"not a png")
    _write(tmp_path, [
        {"image": "img/0.png", "prompt": "Caption it.", "references": ["a red circle"], "id": "first"},
        {"image": "img/missing.png", "prompt": "p", "references": []},
        "\n",  # blank lines are ignored
        {"image": "img/corrupt.png", "prompt": "p", "references": []},
        {"image": "img/../img/1.png", "prompt": "Speed only.", "references": []},  # '..' that stays inside
    ])
    data = load_folder(tmp_path)
    assert [s.id for s in data] == ["first", f"{tmp_path.name}/3"]
    assert data[0].references == ["a red circle"] and data[0].image.mode == "RGB" and data[1].references == []
    assert [sid for sid, _ in data.skipped] == [f"{tmp_path.name}/1", f"{tmp_path.name}/2"]
    assert "not found" in data.skipped[0][1] and data.source.endswith("samples.jsonl")
    assert len(load_folder(tmp_path / "samples.jsonl", limit=1)) == 1


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "p", "references": []}], "samples.jsonl:1: no field 'image'"),
    ([{"image": "img/0.png", "prompt": "p", "references": []}, {"image": "img/0.png", "references": []}],
     "samples.jsonl:2: no field 'prompt'"),
    ([{"image": "img/0.png", "prompt": "p", "references": "a red circle"}], "'references' must be a list of strings"),
    (["{not json\n"], "samples.jsonl:1: not valid JSON"),
])
def test_bad_lines_are_one_line_errors(tmp_path, rows, message):
    _write(tmp_path, rows)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")) as err:
        load_folder(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("image", ["ABSOLUTE", "../outside.png", "img/../../outside.png", "../data/img/0.png"])
def test_image_paths_stay_inside_the_folder(tmp_path, image):
    """The rule (docs/tasks.md): relative to the folder and inside it, so a data folder means the same samples
    wherever it is copied; the image exists in every case, so only the rule can refuse it."""
    data = tmp_path / "data"
    _write(data, [])
    synthetic_samples("synthetic-coco", 1)[0].image.save(tmp_path / "outside.png")
    image = str(tmp_path / "outside.png") if image == "ABSOLUTE" else image
    row = {"prompt": "p", "references": [], "question": "q", "answers": ["a"]}  # --data's fields and textvqa's
    _write(data, [{"image": "img/0.png", **row}, {"image": image, **row}])
    for load in (lambda: load_folder(data), lambda: load_task("textvqa", source=data)):
        with pytest.raises(DatasetError, match=r"samples.jsonl:2: image path .* must be relative to") as err:
            load()
        assert "\n" not in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match=r"samples.jsonl not found: a data folder holds samples.jsonl"):
        load_folder(tmp_path)


def test_cli_measure_on_a_folder(tmp_path, capsys, monkeypatch):
    from llava_accel.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _write(tmp_path, [{"image": f"img/{i}.png", "prompt": "Caption it.", "references": ["a shape"]} for i in range(2)]
           + [{"image": "img/gone.png", "prompt": "p", "references": [], "id": "gone"}])
    out = tmp_path / "m.json"
    assert main(["measure", "--data", str(tmp_path), "--max-new-tokens", "2", "--warmup", "1", "--no-flops",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["dataset"] == "custom" and data["config"]["source"].endswith("samples.jsonl")
    assert len(data["predictions"]) == 2 and data["flops"] is None
    assert [sid for sid, _ in data["config"]["skipped_samples"]] == ["gone"]
    assert any("1 samples skipped" in n for n in data["notes"]) and "note" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/dir"], "data folder not found: /no/such/dir"),
    (["--task", "nope"], "unknown task 'nope'"),
])
def test_cli_measure_bad_data_is_one_line(capsys, args, message):
    from llava_accel.cli import main

    assert main(["measure", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llava-accel: error: ") and message in err and err.count("\n") == 1
