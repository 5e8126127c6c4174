"""The report from a fixture results file: tables in the study's layout, units and energy labels, valid PNG plots.

tests/fixtures/results_tiny.jsonl is the output of `llava-accel sweep benchmarks/reference_study_tiny.toml` on the
tiny random-weight model (2-core CPU; predictions and per-batch records dropped to keep it small), plus one
hand-written out-of-memory line.
"""

import json
import re
import struct
from pathlib import Path

import pytest
from PIL import Image

from llava_accel.cli import main
from llava_accel.study.pareto import pareto_front, recommend
from llava_accel.study.rows import Row, load_results, merge_repetitions

FIXTURE = Path(__file__).parent / "fixtures" / "results_tiny.jsonl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SI = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(FIXTURE), "--out", str(out), "--latency-budget", "0.1"]) == 0
    return out, (out / "report.md").read_text()


def records():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def test_every_plot_is_a_valid_png(report):
    out, text = report
    linked = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", text)
    expected = {"latency_vs_batch", "energy_vs_batch", "quality_vs_input_len", "backends", "pareto_latency",
                "pareto_energy"}
    assert expected <= {Path(p).stem for p in linked} and any(Path(p).stem.startswith("layers_") for p in linked)
    for rel in linked:
        data = (out / rel).read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200
        with Image.open(out / rel) as img:
            img.verify()  # checks the chunks' CRCs


def test_tables_follow_the_study_layout_in_spec_order(report):
    _, text = report
    sections = re.findall(r"^## \d+\. (.+)$", text, flags=re.M)
    assert sections == ["Batch size", "Max input length", "Optimisation", "GPU vs CPU"]
    header = next(line for line in text.splitlines() if line.startswith("| batch |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:5] == ["batch", "WER %", "latency s/batch", "energy J/sample", "prefill FLOPs/batch"]
    # every column of measured values carries a unit or is a named metric
    assert {"latency s/sample", "TTFT ms", "ms/output token", "tokens/s", "energy J/batch", "MFU %"} <= set(cells)


def test_numbers_are_the_fixture_numbers_with_their_labels(report):
    _, text = report
    ok = [r for r in records() if r["status"] == "ok" and r["point"]["kind"] == "measure"]
    bs4 = next(r for r in ok if r["point"]["batch_size"] == 4 and "batch size" in r["grids"])
    row = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    res = bs4["result"]
    assert cells[1] == f"{res['wer']:.4g}"
    assert cells[2] == f"{res['latency']['per_batch']['mean']:.4g}"
    assert res["energy"]["label"] == "estimated" and cells[3] == f"{res['energy']['joules_per_sample']:.4g} (est.)"
    flops = res["flops"]["prefill_per_sample"] * 4
    value, unit = cells[4].split()
    assert unit.endswith("FLOP") and float(value) * SI[unit[:-4]] == pytest.approx(flops, rel=1e-3)
    # no estimated energy loses its label anywhere
    for line in text.splitlines():
        if line.startswith("| ") and "estimated" in line:
            assert "(est.)" in line
    assert "Tiny or random weights (tiny-random)" in text


def test_failed_points_are_listed_with_their_error(report):
    _, text = report
    failed = [r for r in records() if r["status"] != "ok"]
    assert {r["status"] for r in failed} >= {"unavailable", "oom"}
    section = text.split("## Points that did not finish")[1].split("## ")[0]
    for r in failed:
        assert r["error"].split(":")[0] in section and f"| {r['status']} |" in section


def test_per_layer_section_answers_the_claims(report):
    _, text = report
    claims = text.split("### The reference study's claims")[1]
    assert "*Is the convolution heavy?*" in claims and "% of the prefill" in claims
    assert "*Does each part scale linearly with batch?*" in claims and "R² =" in claims
    assert "*What does the image size change?*" in claims and "image tokens" in claims
    assert "Not measured here" not in claims  # the fixture profiles two image sizes
    assert re.search(r"\|\s+vision\.patch_embedding \| patch-embedding conv \|", text)


def test_recommendation_for_a_budget(report):
    _, text = report
    res = load_results([FIXTURE])
    task = "synthetic-textvqa"
    rows = [r for r in res.rows if r.task == task]
    best = recommend([r for r in rows if r.valid] or rows, "latency", 0.1)  # valid measurements only, if any
    line = next(line for line in text.splitlines() if line.startswith("Budget 0.1 s/sample") and
                (best is None or best.label(("backend", "batch_size", "max_input_len", "img_size")) in line))
    assert ("nothing measured fits" in line) == (best is None)


def row(backend, wer, latency, energy=1.0, **kw):
    return Row(backend=backend, device="cpu", dtype="float32", task="t", batch_size=kw.pop("batch_size", 1),
               max_input_len=None, img_size=None, wer=wer, latency_sample_s=latency, energy_sample_j=energy, **kw)


def test_pareto_front_and_budget_by_hand():
    rows = [row("a", 10.0, 1.0), row("b", 8.0, 2.0), row("c", 9.0, 3.0), row("d", 5.0, 4.0), row("e", 5.0, 5.0)]
    assert [r.backend for r in pareto_front(rows, "latency")] == ["a", "b", "d"]  # c and e are dominated
    assert recommend(rows, "latency", 3.5).backend == "b"
    assert recommend(rows, "latency", 10).backend == "d"  # ties on WER go to the cheaper
    assert recommend(rows, "latency", 0.5) is None


def test_repetitions_are_averaged():
    rows = merge_repetitions([row("a", 10.0, 1.0, valid=True, config="A"),
                              row("a", 20.0, 3.0, valid=False, reasons=["x"], config="A"),
                              row("a", 1.0, 1.0, config="B")])  # same backend, another configuration
    a = next(r for r in rows if r.config == "A")
    assert (a.wer, a.latency_sample_s, a.reps, a.valid, a.reasons) == (15.0, 2.0, 2, False, ["x"])
    assert len(rows) == 2


def test_missing_results_file_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jsonl" in err


def test_layer_plot_keeps_each_group_colour_across_panels_and_in_the_legend():
    from matplotlib.colors import to_rgba

    from llava_accel.study.plots import layer_figure

    profile = load_results([FIXTURE]).profiles[0]
    fig = layer_figure(profile)
    colours: dict[str, set] = {}
    panels = []
    for ax in fig.axes:
        labels = [c.get_label() for c in ax.containers]
        panels.append(labels)
        for c in ax.containers:
            colours.setdefault(c.get_label(), set()).add(c.patches[0].get_facecolor())
    assert "patch-embedding conv" in panels[0] and "patch-embedding conv" not in panels[1]  # decode has no vision
    assert {"attention", "MLP", "LM head"} <= set(panels[0]) & set(panels[1])
    assert all(len(c) == 1 for c in colours.values()), colours  # one colour per group, whatever the panel
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and no two groups share one
    (legend,) = fig.legends
    for text, handle in zip(legend.get_texts(), legend.legend_handles):
        assert to_rgba(handle.get_facecolor()) == next(iter(colours[text.get_text()]))


def _quality_rows():
    rows = []
    for task, native in (("coco", {"cider": 6.3}), ("textvqa", {"vqa_accuracy": 1.0})):
        for length in (50, 100, 200):
            rows.append(Row("cpu", "cpu", "float32", task, 1, length, None, wer=0.0, native=native,
                            latency_sample_s=0.1 * length, energy_sample_j=1.0, energy_label="estimated"))
    rows.append(Row("eager", "cpu", "float32", "coco", 1, 200, None, wer=0.0, native={"cider": 6.3},
                    latency_sample_s=30.0, energy_sample_j=2.0, energy_label="estimated"))
    return rows


def test_quality_plots_give_each_metric_its_own_axis_and_show_zero_wer(tmp_path, monkeypatch):
    from llava_accel.study import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or str(path))
    rows = _quality_rows()
    plots.quality_vs_input_len(rows, tmp_path / "q.png")
    plots.backends_side_by_side(rows, tmp_path / "b.png")
    plots.pareto(rows, "latency", tmp_path / "p.png")
    quality, side, pareto_fig = figures
    wer, cider, vqa = quality.axes
    assert (cider.get_ylabel(), vqa.get_ylabel()) == ("cider", "vqa_accuracy")  # CIDEr and accuracy apart
    assert [line.get_label() for line in cider.get_lines()] == ["cpu float32 coco bs1"]  # not "cpu cpu float32"
    for ax in (wer, side.axes[2], *pareto_fig.axes):  # every WER axis: 0 at the bottom, a note, not +-0.04
        assert ax.get_ylim() == (0.0, 1.0) and "WER 0 % everywhere" in [t.get_text() for t in ax.texts]


def test_reasons_name_their_rows_and_invalid_rows_are_not_recommended():
    from llava_accel.study.report import _recommendations, grid_table

    rows = [row("a", 10.0, 1.0, valid=True), row("b", 1.0, 0.5, valid=False, reasons=[
        "time per output token varies too much: coefficient of variation 56.1% > 10%"]),
        row("c", 9.0, 2.0, valid=False, reasons=["2 full timed batches, fewer than 5: pass more samples"])]
    _, table = grid_table(rows)
    assert "- not valid, time per output token varies too much: b (coefficient of variation 56.1% > 10%)" in table
    assert "- not valid, 2 full timed batches, fewer than 5: c (pass more samples)" in table
    text = "\n".join(_recommendations(rows, "latency", 0.6))
    assert "| a cpu float32 bs1 |" in text and "| b cpu" not in text and "2 configurations whose measurement is not valid" in text
    assert "nothing measured fits" in text  # b (0.5 s) would fit, but its measurement is not valid
    only_invalid = "\n".join(_recommendations(rows[1:], "latency", None))
    assert "No valid measurement for this task" in only_invalid
    assert "| b cpu float32 bs1 |" in only_invalid


def test_claims_within_the_measured_spread_are_not_findings():
    from llava_accel.study.profile import answer_claims

    profiles = load_results([FIXTURE]).profiles
    before = "\n".join(answer_claims(profiles))
    assert "not recorded" in before  # the fixture predates the spread: no claim is made from noise
    for p in profiles:
        for ph in p.phases:
            ph.whole_spread_s = [10.0] * len(p.batch_sizes)  # a spread far beyond any difference measured
            for part in ph.parts:
                part.spread_s = [10.0] * len(p.batch_sizes)
    after = "\n".join(answer_claims(profiles))
    assert "not linear (" not in after and "no change with batch beyond the spread" in after
    assert "is within the measured spread" in after and "exceeds" not in after
