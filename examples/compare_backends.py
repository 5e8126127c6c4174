"""Compare every backend that can run here on one task: quality, latency, energy and FLOPs, as a table and a plot.

    python examples/compare_backends.py              # the embedded tiny model on a synthetic task (CPU is enough)
    python examples/compare_backends.py --7b         # llava-hf/llava-1.5-7b-hf on TextVQA (a GPU, and the data)

Without a GPU every backend runs on the CPU in float32, so there is still something to compare.
"""

import argparse

import torch

import llava_accel as la

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--7b", dest="real", action="store_true", help="llava-1.5-7b on TextVQA instead of the tiny model")
parser.add_argument("--backends", nargs="*", help="names to compare (default: every registered backend)")
parser.add_argument("--limit", type=int, default=24, help="samples per backend (2 warm-up + 5 timed batches at least)")
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--plot", default="compare_backends.png")
args = parser.parse_args()

model, task = ("llava-hf/llava-1.5-7b-hf", "textvqa") if args.real else (None, "synthetic-textvqa")
options = {} if torch.cuda.is_available() else {"device": "cpu", "dtype": "float32"}

results = {}
for name in args.backends or [info.name for info in la.list_backends()]:
    try:
        backend = la.load_backend(name, model=model, **options)
    except la.LlavaAccelError as exc:  # not installed here, no GPU, ...: say why and go on
        print(f"skipping {name}: {exc}")
        continue
    results[name] = la.measure(backend, task, batch_size=args.batch_size, limit=args.limit)
    del backend  # free its memory before loading the next one

print(f"\n{task}, {args.limit} samples, batch {args.batch_size}")
print(f"{'backend':10} {'device':6} {'dtype':9} {'WER %':>7} {'s/sample':>9} {'TTFT s':>8} {'J/sample':>16} "
      f"{'prefill FLOPs':>14}  valid")
for name, m in results.items():
    b, energy = m.config["backend"], m.energy
    ttft = m.latency.ttft.mean if m.latency.ttft else float("nan")
    flops = f"{m.flops.prefill_per_sample:.3g}" if m.flops else "n/a"
    print(f"{name:10} {b['device']:6} {b['dtype']:9} {m.wer:7.2f} {m.latency.per_sample_s:9.4f} {ttft:8.4f} "
          f"{energy.joules_per_sample:7.3g} ({energy.label}) {flops:>14}  {'yes' if m.validity.valid else 'no'}")

if results:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    for ax, (label, value) in zip(axes, [("latency per sample (s)", lambda m: m.latency.per_sample_s),
                                         ("energy per sample (J)", lambda m: m.energy.joules_per_sample),
                                         ("WER (%)", lambda m: m.wer)]):
        ax.bar(names, [value(results[n]) for n in names])
        ax.set_ylabel(label)
    estimated = any(m.energy.label == "estimated" for m in results.values())
    weights = {m.config["backend"]["weights"] for m in results.values()}
    fig.suptitle(f"{task} on {model or 'the embedded tiny model'} (weights: {', '.join(weights)})"
                 + ("; energy estimated, not measured" if estimated else ""))
    fig.savefig(args.plot, dpi=110)
    print(f"plot: {args.plot}")
