"""Train the embedded default: a tiny LLaVA that really learned the three synthetic tasks, on CPU, from a seed.

``python -m llava_accel.models.train_tiny --out DIR`` builds a tiny LLaVA (``tiny.py``), trains it on a fresh stream
of synthetic samples and writes weights, tokenizer, processor and a model card to DIR. Training data come from
seeds >= ``TRAIN_SEED_BASE``; the held-out scores are measured with greedy decoding on seeds below it, which
training never sees. The loss counts only answer tokens (the prompt is given, as in LLaVA's instruction tuning).
Same seed and thread count -> same weights and same held-out scores.

What made the tasks learnable (measured on 2 CPU cores): initializer_range 0.1 instead of 0.02 (at 0.02 no model
used the image within 200 steps), GPT-2's residual scaling, answer-only loss, words and shapes drawn at (near) fixed
places (a word moved by +-2 px over 16-px patches stayed at chance for 250 steps), and for multiple choice a
curriculum (``Phase``). Matching the image's colour to an option and answering that option's letter stayed at
chance through 1,800 mixed steps, through 600-900 more ScienceQA-heavy steps from that model (2-5 or 2-3 options),
and through 2,500 steps from scratch with one token per option line. Once the context named the colour (a
text-only version of the question) it formed after ~1,100-1,300 ScienceQA steps, from that model or from scratch,
and carried over to the colour the model sees; the hints then fade out, so the answers must come from the image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..preprocessing import encode_batch, format_prompt
from ..metrics import environment
from ..metrics.wer import corpus_wer
from ..tasks import SYNTHETIC_TASKS, Sample, native_metric, synthetic_samples
from .tiny import TinySpec, build_processor, build_tokenizer, default_corpus, save_tiny, tiny_config

TRAIN_SEED_BASE = 1_000_000  # training draws samples from seeds >= this; everything below is held out
HELDOUT_SEED = 0  # the seed `load_task` uses by default, so the demo's samples are held out too
TARGETS = {"synthetic-coco": ("wer", "<=", 10.0), "synthetic-textvqa": ("vqa_accuracy", ">=", 0.80),
           "synthetic-scienceqa": ("accuracy", ">=", 0.80)}


@dataclass
class Phase:
    """One stage of the curriculum: its task mix, its colour hints, and its own learning-rate cycle (linear warm-up,
    then cosine decay to ``min_lr_ratio``). ``vision_lr`` covers the vision tower and projector."""

    steps: int
    # steps of each task per cycle, one task per step
    task_weights: dict[str, int] = field(default_factory=lambda: {"synthetic-coco": 2, "synthetic-textvqa": 1,
                                                                  "synthetic-scienceqa": 2})
    lr: float = 2e-3
    vision_lr: float = 2e-3
    # share of ScienceQA samples whose context names the colour, at the phase's first and last step (linear between)
    colour_hints: tuple[float, float] = (0.0, 0.0)


def default_phases() -> tuple[Phase, ...]:
    """The shipped curriculum. Measured on 2 CPU cores: the model learns to see in the first ~1,000 steps (reading
    ~100, captions ~1,000); multiple choice stays at chance until the colour is named in the text, then the match
    between a colour and an option's letter forms (by step ~2,400 here) and carries over to the colour the model
    sees; in the second phase the hints fade out, so that the answer must come from the image."""
    return (Phase(3000, {"synthetic-coco": 2, "synthetic-textvqa": 1, "synthetic-scienceqa": 3}, colour_hints=(1.0, 1.0)),
            Phase(4000, {"synthetic-coco": 1, "synthetic-textvqa": 1, "synthetic-scienceqa": 3}, lr=1e-3,
                  vision_lr=1e-3, colour_hints=(1.0, 0.0)))


@dataclass
class TrainConfig:
    """The recipe: the curriculum's phases, and what they share."""

    seed: int = 0
    phases: tuple[Phase, ...] = field(default_factory=default_phases)
    steps: int | None = None  # stop after this many steps (default: the whole curriculum)
    batch_size: int = 16
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_samples: int = 48  # per task, during training
    final_eval_samples: int = 200  # per task, at the end (the model card's scores)
    threads: int | None = 1  # one thread: reproducible, and faster than two on a shared 2-core machine

    @property
    def total_steps(self) -> int:
        full = sum(p.steps for p in self.phases)
        return full if self.steps is None else min(self.steps, full)

    def phase_at(self, step: int) -> tuple[Phase, int]:
        """The phase that ``step`` belongs to, and the step's index within it."""
        for phase in self.phases:
            if step < phase.steps:
                return phase, step
            step -= phase.steps
        raise IndexError("step past the curriculum")


# -- data ----------------------------------------------------------------------------------------------------------
def task_schedule(weights: dict[str, int]) -> list[str]:
    """One cycle of tasks, one task per step, ``weights[t]`` steps of task t, interleaved."""
    left, cycle = dict(weights), []
    while any(left.values()):
        for t in weights:
            if left[t]:
                cycle.append(t)
                left[t] -= 1
    return cycle


def training_batch(step: int, cfg: TrainConfig) -> tuple[str, list[Sample]]:
    """The task and samples of one step: a pure function of (seed, step), from seeds no evaluation uses.

    One task per batch: the tasks' prompts differ in length by 2x, so mixed batches would be mostly padding.
    """
    phase, i = cfg.phase_at(step)
    cycle = task_schedule(phase.task_weights)
    task = cycle[i % len(cycle)]
    start, end = phase.colour_hints
    hints = start + (end - start) * i / max(1, phase.steps - 1)
    return task, synthetic_samples(task, cfg.batch_size, seed=TRAIN_SEED_BASE * (1 + cfg.seed) + step,
                                   colour_hints=hints)


def encode_for_training(processor, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Prompt (as at inference) + answer + EOS, right-padded; labels are -100 everywhere but on the answer.

    The prompt is tokenized exactly as ``encode_batch`` does (checked by the tests), so the model trains on the
    inputs it will see. Right padding keeps positions equal to those of the left-padded inference batch.
    """
    tok = processor.tokenizer
    pixel = processor.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
    n_image = (pixel.shape[-1] // processor.patch_size) ** 2 + processor.num_additional_image_tokens - (
        processor.vision_feature_select_strategy == "default")  # what LlavaProcessor expands <image> to
    image_id = tok.convert_tokens_to_ids("<image>")
    rows, labels = [], []
    for s in samples:
        prompt = []
        for i in tok(format_prompt(s.prompt))["input_ids"]:
            prompt.extend([i] * n_image if i == image_id else [i])
        answer = tok(" " + s.references[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    pad = lambda r, v: r + [v] * (width - len(r))  # noqa: E731
    return {"input_ids": torch.tensor([pad(r, tok.pad_token_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows]),
            "labels": torch.tensor([pad(r, -100) for r in labels]), "pixel_values": pixel}


# -- held-out scores -----------------------------------------------------------------------------------------------
def score(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """WER (percent, against the best of the references) and the samples' native metric, as ``measure`` scores."""
    return {"wer": corpus_wer(predictions, [s.references for s in samples]).wer, **native_metric(samples, predictions)}


@torch.inference_mode()
def predict(model, processor, samples: Sequence[Sample], batch_size: int = 32, max_new_tokens: int = 16,
            blank: bool = False) -> list[str]:
    """Greedy answers, through the same preprocessing as every backend. ``blank``: white images instead."""
    from PIL import Image

    tok = processor.tokenizer
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        images = [Image.new("RGB", s.image.size, (255, 255, 255)) if blank else s.image for s in chunk]
        inputs = encode_batch(processor, images, [s.prompt for s in chunk])
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += [t.strip() for t in tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def heldout_scores(model, processor, n: int, seed: int = HELDOUT_SEED, blank: bool = False) -> dict[str, dict]:
    """{task: {metric: value}} on ``n`` held-out samples per task."""
    was_training = model.training
    model.eval()
    try:
        return {t: score(s, predict(model, processor, s, blank=blank))
                for t in SYNTHETIC_TASKS for s in [synthetic_samples(t, n, seed=seed)]}
    finally:
        model.train(was_training)


def meets_targets(scores: dict[str, dict]) -> dict[str, bool]:
    return {t: (scores[t][m] <= v if op == "<=" else scores[t][m] >= v) for t, (m, op, v) in TARGETS.items()}


def format_scores(scores: dict[str, dict]) -> str:
    return "  ".join(f"{t.removeprefix('synthetic-')} {TARGETS[t][0]} {d[TARGETS[t][0]]:.3f}" for t, d in scores.items())


# -- training ------------------------------------------------------------------------------------------------------
def build(spec: TinySpec, seed: int):
    """Randomly initialised model and its processor (tokenizer trained on synthetic prompts and answers)."""
    from .architecture import build_model

    tokenizer = build_tokenizer(default_corpus(seed=seed), spec.vocab_size)
    processor = build_processor(tokenizer, spec)
    model = build_model(tiny_config(spec, tokenizer), device="cpu", dtype=torch.float32, seed=seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    scale_residual_init(model, spec)
    return model, processor


def scale_residual_init(model, spec: TinySpec) -> None:
    """GPT-2's init: divide the weights that write into the residual stream by sqrt(2 x layers).

    Each layer then starts close to the identity, so the 8-layer text model trains like a shallow one at first;
    without it, it never started to read the image within our budget (a 2-layer model did after ~100 steps).
    """
    for name, p in model.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            p.data.div_(math.sqrt(2 * spec.text_layers))
        elif name.endswith(("out_proj.weight", "fc2.weight")) and "vision_tower" in name:
            p.data.div_(math.sqrt(2 * spec.vision_layers))


def optimizer_for(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups, vision (tower + projector) first; each step sets their rates (``set_lr``)."""
    vision = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    ids = {id(p) for p in vision}
    text = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW([{"params": vision}, {"params": text}], betas=(0.9, 0.98), weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps: int, cfg: TrainConfig) -> float:
    """Within a phase of ``steps`` steps: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, steps - 1 - cfg.warmup)  # the last step at min_lr_ratio
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(opt: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    phase, i = cfg.phase_at(step)
    factor = lr_factor(i, phase.steps, cfg)
    for group, base in zip(opt.param_groups, (phase.vision_lr, phase.lr)):
        group["lr"] = base * factor


def train(cfg: TrainConfig, spec: TinySpec, out: str | Path | None = None, log=print):
    """Train and return (model, processor, history); with ``out``, save there at every evaluation and at the end."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, processor = build(spec, cfg.seed)
    torch.manual_seed(cfg.seed)
    model.train()
    opt = optimizer_for(model, cfg)
    n_params, steps = sum(p.numel() for p in model.parameters()), cfg.total_steps
    log(f"tiny LLaVA: {n_params / 1e6:.2f}M parameters, {steps} steps of {cfg.batch_size} in "
        f"{len(cfg.phases)} phase(s), {torch.get_num_threads()} threads")
    tasks = list(dict.fromkeys(t for p in cfg.phases for t in p.task_weights))
    history, losses, start = {"loss": [], "evals": []}, {t: [] for t in tasks}, time.perf_counter()
    for step in range(steps):
        set_lr(opt, step, cfg)
        task, samples = training_batch(step, cfg)
        loss = model(**encode_for_training(processor, samples)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses[task].append(loss.item())
        history["loss"].append(loss.item())
        done = step + 1
        if done % 25 == 0 or done == steps:
            elapsed = time.perf_counter() - start
            per_task = " ".join(f"{t.removeprefix('synthetic-')} {sum(v) / len(v):.3f}" for t, v in losses.items() if v)
            log(f"step {done}/{steps}  loss {per_task}  {elapsed / done:.2f} s/step  "
                f"elapsed {elapsed / 60:.1f} min  ETA {(steps - done) * elapsed / done / 60:.1f} min", flush=True)
            losses = {t: [] for t in tasks}
        if done % cfg.eval_every == 0 and done < steps:
            scores = heldout_scores(model, processor, cfg.eval_samples)
            history["evals"].append({"step": done, "n": cfg.eval_samples, "scores": scores})
            log(f"held-out (seed {HELDOUT_SEED}, {cfg.eval_samples}/task): {format_scores(scores)}", flush=True)
            if out:
                save_default(out, model, processor, cfg, spec, history, time.perf_counter() - start)
    scores = heldout_scores(model, processor, cfg.final_eval_samples)
    blank = heldout_scores(model, processor, cfg.final_eval_samples, blank=True)
    history["final"] = {"n": cfg.final_eval_samples, "scores": scores, "blank_image_scores": blank,
                        "meets_targets": meets_targets(scores), "train_minutes": (time.perf_counter() - start) / 60}
    log(f"final held-out (seed {HELDOUT_SEED}, {cfg.final_eval_samples}/task): {format_scores(scores)}")
    log(f"same samples, blank images:           {format_scores(blank)}")
    if out:
        save_default(out, model, processor, cfg, spec, history, time.perf_counter() - start)
    return model, processor, history


def save_default(out, model, processor, cfg: TrainConfig, spec: TinySpec, history: dict, seconds: float) -> None:
    """Weights, tokenizer, processor, marker (``tiny-trained`` + recipe + scores) and the model card."""
    model.eval()
    card = {"weights": "tiny-trained", "seed": cfg.seed, "spec": asdict(spec), "train": asdict(cfg),
            "train_seconds": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{os.cpu_count()}-core {environment.cpu_model()}",
            "evals": history["evals"], "final": history.get("final")}
    save_tiny(out, model, processor, card)
    (Path(out) / "README.md").write_text(model_card(card, sum(p.numel() for p in model.parameters())))
    model.train()


def model_card(card: dict, n_params: int) -> str:
    """The folder's README: what the model is, how it was trained, and what it scores (filled from the marker)."""
    spec, cfg, final = card["spec"], card["train"], card.get("final")
    side, patch = spec["image_size"], spec["patch_size"]
    rows = ["| task | metric | target | held-out | blank images |", "|---|---|---|---|---|"]
    for t, (m, op, v) in TARGETS.items():
        got = f"{final['scores'][t][m]:.3f}" if final else "(training)"
        blank = f"{final['blank_image_scores'][t][m]:.3f}" if final else ""
        rows.append(f"| {t} | {m} | {op} {v:g} | {got} | {blank} |")
    unmet = [f"- {t}: {final['scores'][t][TARGETS[t][0]]:.3f} (target {TARGETS[t][1]} {TARGETS[t][2]:g})"
             for t, ok in (final["meets_targets"] if final else {}).items() if not ok]
    evals = "\n".join(f"- step {e['step']}: {format_scores(e['scores'])}" for e in card["evals"]) or "- (none)"
    phases = "\n".join(
        f"  {i + 1}. {p['steps']} steps, cycle {p['task_weights']}, learning rate {p['lr']:g} (text) and "
        f"{p['vision_lr']:g} (vision tower + projector), ScienceQA contexts naming the colour: "
        f"{p['colour_hints'][0]:.0%} at its start, {p['colour_hints'][1]:.0%} at its end"
        for i, p in enumerate(cfg["phases"]))
    steps = sum(p["steps"] for p in cfg["phases"]) if cfg["steps"] is None else cfg["steps"]
    return f"""# llava_accel default model: a tiny LLaVA trained on the synthetic tasks

A {n_params / 1e6:.2f}M-parameter LLaVA-1.5-style model (CLIP vision tower, 2-layer GELU projector, Llama text
model) trained from scratch on CPU on `synthetic-coco`, `synthetic-textvqa` and `synthetic-scienceqa`
(`llava_accel/tasks/synthetic.py`). It exists so that quality numbers mean something offline: its answers depend
on the image, so a broken image path, prompt or metric shows up as a score drop. It is not a general model.

## Architecture
- Vision: CLIP ViT, {side} px images, patch {patch} -> {(side // patch) ** 2} image tokens, hidden {spec['vision_hidden']},
  {spec['vision_layers']} layers (features from the second-to-last layer, as in LLaVA-1.5).
- Text: Llama, hidden {spec['text_hidden']}, {spec['text_layers']} layers, {spec['text_heads']} heads, MLP
  {spec['text_hidden'] * spec['intermediate_ratio']}; byte-level BPE tokenizer trained on the tasks' prompts and
  answers (every answer word, colour, shape and option letter is one token).
- Why a deep, narrow text model: speculative decoding (EAGLE) needs a draft head that is cheap *relative to* one
  target decode step. On a 2-core CPU a decode step costs ~3.1 / 5.8 / 8.4 ms with 4 / 8 / 12 text layers (hidden
  256) against ~0.5 ms for a 1-layer EAGLE head, so {spec['text_layers']} layers leave room for a real speed-up,
  where a wide shallow model would not.

## Training
- Data: a fresh stream of synthetic samples, batch {cfg['batch_size']}, one task per step, from seeds
  >= {TRAIN_SEED_BASE:,} (step s of seed k uses seed {TRAIN_SEED_BASE:,} x (k+1) + s), in {len(cfg['phases'])} phase(s):
{phases}
  Held-out scores use seed {HELDOUT_SEED} (the default of `load_task`), never seen in training. The tasks' sample
  spaces are small on purpose (each word is drawn at one fixed place, so `synthetic-textvqa` has 12 distinct
  images; shapes vary in colour, kind, size and by +-2 px in position), so a held-out image can equal a training
  image: the scores show that the model reads the image, not that it generalises beyond the synthetic tasks.
- Loss on answer tokens (+ EOS) only. AdamW (betas 0.9/0.98, weight decay {cfg['weight_decay']}); in each phase
  {cfg['warmup']} warm-up steps, then cosine decay to {cfg['min_lr_ratio']:g}x; gradient clip {cfg['grad_clip']};
  {steps} steps in all, fp32.
- Seed {card['seed']}, {card['threads']} thread(s), torch {card['torch']}: {card['train_seconds'] / 60:.1f} min on
  a {card.get('machine', '2-core CPU')}. Same seed and thread count give the same weights and scores.
- Reproduce: `python -m llava_accel.models.train_tiny --out DIR --seed {card['seed']} --threads {card['threads']}`
  (the other settings are the script's defaults).

## Scores (greedy decoding, {final['n'] if final else '-'} held-out samples per task, seed {HELDOUT_SEED})
{chr(10).join(rows)}

{"## Targets not met" + chr(10) + chr(10).join(unmet) + chr(10) + chr(10) if unmet else ""}WER in percent, against the best of each caption's references, and the native metrics as `measure()` computes
them (docs/metrics.md): VQA accuracy (EvalAI; all 10 references are the word, so it is exact match after
normalisation) and letter accuracy. The marker file `llava_accel.json` also holds CIDEr and lmms-eval's strict
letter match. "blank images": the same prompts with all-white images; the drop shows the answers come from the
image.

Held-out scores during training ({cfg['eval_samples']} samples per task):
{evals}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava_accel.models.train_tiny", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tiny-llava-trained", help="folder to write the trained model to")
    types = {"int": int, "float": float, "int | None": int}
    for name, f in TrainConfig.__dataclass_fields__.items():
        if f.type in types:
            p.add_argument(f"--{name.replace('_', '-')}", type=types[f.type], default=f.default)
    p.add_argument("--phases", type=json.loads, default=None,
                   help='JSON list of Phase fields, e.g. [{"steps": 100, "task_weights": {"synthetic-textvqa": 1}}] '
                        '(default: the shipped curriculum)')
    p.add_argument("--spec", type=json.loads, default={}, help='JSON overrides of TinySpec, e.g. {"text_layers": 4}')
    args = p.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__
                         if k != "phases" and getattr(args, k, None) is not None})
    if args.phases is not None:
        cfg.phases = tuple(Phase(**{**p, "colour_hints": tuple(p.get("colour_hints", (0.0, 0.0)))})
                           for p in args.phases)
    train(cfg, TinySpec(**args.spec), out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
