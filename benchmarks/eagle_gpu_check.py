"""EAGLE on the LLaVA-1.5-7B architecture on a GPU: tokens equal to ``eager``, and what drafting and verifying cost.

    python benchmarks/eagle_gpu_check.py [--out eagle_gpu_check.json] [--batches 1,4] [--new-tokens 32]

Random fp16 weights (the shipped 7B config, built in memory, as ``gpu_check.py``) and a random draft head, so the
head's guesses are rarely right (tau ~1) and there is no speed-up to see. What it checks: the share of rows whose
tokens equal eager's on 780-token prompts (left-padded batches of ragged prompts) with the installed transformers
(the lent GPU machine has 5.17), for the default tree, a chain and EAGLE-2's published tree (random weights give
nearly flat logits, where fp16 rounding of a several-token verification can flip a near-tie: a share below 100%
is to be read with that in mind, and looked at); and what one head forward and one verification cost there
relative to one ``eager`` decode step. With those ratios a trained head's acceptance
length tau gives the decode speed-up to expect: about tau x step / (draft + verification per step).
Exits with one line where there is no CUDA GPU. About 2-3 minutes on an H100/H200.
"""

from __future__ import annotations

import argparse
import json

import torch

from eagle_speedup import run_batch_size
from gpu_check import MODEL_ID, TEXT_TOKENS, random_head, random_llava, random_samples

TREES = {"default": {}, "chain": {"tree": "chain"}, "eagle2-paper": {"depth": 6, "top_k": 10, "total_tokens": 60}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="eagle_gpu_check.json")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("eagle_gpu_check: needs a CUDA GPU; this machine has none (benchmarks/eagle_speedup.py runs on a CPU)")
        return 0

    import llava_accel as la
    from llava_accel.models.architecture import load_config

    loaded = random_llava(load_config(MODEL_ID), "cuda", torch.float16)
    head_dir = random_head(loaded)
    samples = random_samples(loaded.processor, args.samples, TEXT_TOKENS, ragged=True)
    eager = la.load_backend("eager", model=loaded)
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "model": f"{MODEL_ID} (random fp16 weights)",
              "new_tokens": args.new_tokens, "samples": len(samples), "results": []}
    print(f"{report['gpu']}, torch {report['torch']}, transformers {report['transformers']}; {report['model']}; "
          f"{len(samples)} ragged prompts of up to {TEXT_TOKENS} + 576 tokens, {args.new_tokens} new tokens")
    print("tree          batch  identical rows  tau   eager step ms  draft ms/step  verify ms/step  head/step  "
          "verify/step")
    for name, options in TREES.items():
        eagle = la.load_backend("eagle", model=loaded, head=head_dir, **options)
        for batch_size in [int(b) for b in args.batches.split(",")]:
            r = run_batch_size({"eager": eager, "eagle": eagle}, samples, batch_size, args.rounds, args.new_tokens,
                               reference="eager", min_new_tokens=args.new_tokens, require_identical=False)
            r.update(tree=name, tree_config=eagle.describe()["tree"])
            report["results"].append(r)
            print(f"{name:13} {batch_size:5}  {100 * r['identical_row_share']:8.0f}%  "
                  f"{r['eagle_stats']['mean_acceptance_length']:.2f}  "
                  f"{r['step_ms']:13.2f}  {r['draft_ms_per_cycle']:13.2f}  {r['verify_ms_per_cycle']:14.2f}  "
                  f"{r['head_forward_to_step']:9.2f}  {r['verify_to_step']:11.2f}", flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
