"""Training an EAGLE draft head by self-distillation: the target's own greedy answers are the data.

1. The target answers task prompts greedily (``eager`` backend); each prompt + answer is run through the target
   once more to collect its input embeddings (image features included) and final-norm hidden states.
2. The head learns to predict the next feature from [next token's embedding, feature] with the EAGLE-1 loss:
   SmoothL1(predicted, true feature) + ``ce_weight`` x cross-entropy between the target's LM-head distribution on
   the true feature and on the predicted one; uniform noise on the input features (the head is fed its own,
   imperfect predictions when drafting); AdamW with warm-up and cosine decay; gradient clipping.
Only answer positions count in the loss (those are the positions the head drafts from); every position is fed,
so the head's attention sees the image and the prompt as when drafting.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..outputs import check_folder, save
from ..tasks import SYNTHETIC_TASKS, load_tasks
from ..lean.prefill import run_target
from .head import EagleHead, HeadConfig, fingerprint, new_head, save_head, target_name


@dataclass
class TrainConfig:
    tasks: list[str] = field(default_factory=lambda: sorted(SYNTHETIC_TASKS))
    samples_per_task: int = 256
    data_seed: int = 1000  # seed of synthetic training prompts (tests and benchmarks use small seeds)
    source: str | None = None  # where a named task's data lives (see load_task); None: its default
    split: str | None = None  # a named task's split: train on another split than the one you benchmark on
    max_new_tokens: int = 32
    generate_batch: int = 16
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3  # small heads on small targets learn well at rates far above EAGLE's 3e-5 for 7B
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 0.5
    noise: float = 0.2  # width of the uniform noise added to input features (EAGLE-1: U(-0.1, 0.1))
    ce_weight: float = 0.1
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # of the target while collecting features; the head trains in float32
    profile_samples: int = 16  # held-out prompts per task (seed data_seed + 1) for the acceptance profile; 0: none
    # tasks of the profile (default: ``tasks``); the tree matters where answers are long: a one-word answer takes
    # one verification whatever the tree
    profile_tasks: list[str] | None = None


@dataclass
class Example:
    embeds: torch.Tensor  # (T, h) target input embeddings of prompt + answer (image features in place)
    features: torch.Tensor  # (T, h) target final-norm hidden states
    answer_start: int  # index of the first answer token


@dataclass
class TrainResult:
    out_dir: str
    examples: int
    steps: int
    seconds: float
    loss: float  # mean over the last epoch
    top1: float  # last epoch: share of answer positions where the head's token = the target's


def collect(backend, samples: Sequence, max_new_tokens: int, batch_size: int) -> list[Example]:
    """Greedy answers of the target, then one forward over prompt + answer for its embeddings and features."""
    eos, pad = backend.processor.tokenizer.eos_token_id, backend.processor.tokenizer.pad_token_id
    examples = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            inputs = backend.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            answers = backend.generate_ids(inputs, max_new_tokens)
            answer_mask = (answers != pad) & ((answers == eos).long().cumsum(1) - (answers == eos).long() == 0)
            full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], answers.masked_fill(~answer_mask, pad)], 1),
                    "attention_mask": torch.cat([inputs["attention_mask"], answer_mask.long()], 1)}
            embeds, hidden, _ = run_target(backend.model, full, use_cache=False)
            prompt_len = inputs["input_ids"].shape[1]
            for b in range(len(chunk)):
                start = int((inputs["attention_mask"][b] == 0).sum())
                end = prompt_len + int(answer_mask[b].sum())
                examples.append(Example(embeds[b, start:end].cpu(), hidden[b, start:end].cpu(), prompt_len - start))
    return examples


def _batch(examples: Sequence[Example], device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded head inputs and targets: input t = [embedding t+1, feature t], target = feature t+1."""
    n = max(e.features.shape[0] for e in examples) - 1
    h = examples[0].features.shape[1]
    embeds, feats, targets = (torch.zeros(len(examples), n, h) for _ in range(3))
    valid = torch.zeros(len(examples), n, dtype=torch.bool)
    loss_mask = torch.zeros(len(examples), n, dtype=torch.bool)
    for b, e in enumerate(examples):
        t = e.features.shape[0] - 1
        embeds[b, :t], feats[b, :t], targets[b, :t] = e.embeds[1:], e.features[:-1], e.features[1:]
        valid[b, :t] = True
        # outputs at answer_start - 1 .. predict the features the drafts are read from; the one after EOS is moot
        loss_mask[b, e.answer_start - 1: t - 1] = True
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = (causal & valid[:, None]) | torch.eye(n, dtype=torch.bool)
    batch = {"embeds": embeds, "features": feats, "targets": targets, "allowed": allowed, "loss_mask": loss_mask,
             "positions": torch.arange(n).expand(len(examples), n)}
    return {k: v.to(device) for k, v in batch.items()}


def eagle_loss(head: EagleHead, lm_head: torch.nn.Module, batch: dict[str, torch.Tensor], noise: float,
               ce_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-1 loss on the answer positions; returns (loss, top-1 agreement with the target)."""
    features = batch["features"]
    if noise:
        features = features + (torch.rand_like(features) - 0.5) * noise
    out = head(batch["embeds"], features, batch["positions"], batch["allowed"])
    m = batch["loss_mask"]
    predicted, target = out[m], batch["targets"][m]
    with torch.no_grad():
        target_probs = torch.softmax(lm_head(target), dim=-1)
    logits = lm_head(predicted)
    ce = -(target_probs * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    loss = F.smooth_l1_loss(predicted, target) + ce_weight * ce
    return loss, (logits.argmax(-1) == target_probs.argmax(-1)).float().mean()


def train_head(model: str | None, out_dir: str | Path, config: TrainConfig | None = None, log=print) -> TrainResult:
    """Train a draft head for ``model`` (hub id or folder; default: the embedded model) and save it to ``out_dir``."""
    from ..registry import load_backend

    config = config or TrainConfig()
    check_folder(out_dir, "head folder")  # a bad output path fails before the work, not after it
    t0 = time.perf_counter()
    samples = [s for task_samples in  # bad task names fail before the model loads
               load_tasks(config.tasks, config.split, config.samples_per_task, config.source, config.data_seed).values()
               for s in task_samples]
    backend = load_backend("eager", model=model, device=config.device, dtype=config.dtype)
    examples = collect(backend, samples, config.max_new_tokens, config.generate_batch)
    log(f"collected {len(examples)} examples in {time.perf_counter() - t0:.0f} s")

    torch.manual_seed(config.seed)
    device = backend.device
    head = new_head(backend.model, seed=config.seed).float().train()
    lm_head = torch.nn.Linear(*reversed(backend.model.lm_head.weight.shape), bias=False, device=device)
    lm_head.weight.data = backend.model.lm_head.weight.detach().float().clone()
    lm_head.requires_grad_(False)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(examples) / config.batch_size)
    total = per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / config.warmup_steps) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    step, loss_sum, top1_sum = 0, 0.0, 0.0
    for epoch in range(config.epochs):
        order = torch.randperm(len(examples)).tolist()
        loss_sum, top1_sum = 0.0, 0.0
        for i in range(0, len(order), config.batch_size):
            batch = _batch([examples[j] for j in order[i:i + config.batch_size]], device)
            loss, top1 = eagle_loss(head, lm_head, batch, config.noise, config.ce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item()
            top1_sum += top1.item()
        log(f"epoch {epoch + 1}/{config.epochs}: loss {loss_sum / per_epoch:.4f}, "
            f"top-1 {top1_sum / per_epoch:.3f}")
    seconds = time.perf_counter() - t0
    result = TrainResult(str(out_dir), len(examples), step, round(seconds, 1), round(loss_sum / per_epoch, 5),
                         round(top1_sum / per_epoch, 4))
    text = backend.model.config.text_config
    head_config = HeadConfig(target=target_name(backend.loaded.model_id), fingerprint=fingerprint(backend.model.lm_head),
                             hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                             training={**asdict(config), **asdict(result), "weights": backend.loaded.weights})
    result.out_dir = str(save(lambda p: save_head(head.eval(), head_config, p), Path(out_dir), "the EAGLE head"))
    if config.profile_samples:
        write_profile(backend.loaded, result.out_dir, config, log)
    return result


def write_profile(loaded: Any, head_dir: str | Path, config: TrainConfig, log=print) -> Path:
    """Measure the head's acceptance profile (tau of every candidate tree, ``sizing.measure_acceptance``) on
    held-out prompts and save it beside the head, where the ``eagle`` backend's tree sizing reads it."""
    from ..registry import load_backend
    from .sizing import measure_acceptance

    held_out = load_tasks(config.profile_tasks or config.tasks, config.split, config.profile_samples, config.source,
                          config.data_seed + 1)
    samples = [s for task_samples in held_out.values() for s in task_samples]
    # an explicit tree: nothing to size while profiling
    eagle = load_backend("eagle", model=loaded, device=config.device, dtype=config.dtype, head=str(head_dir),
                         tree="dynamic")
    t0 = time.perf_counter()
    profile = measure_acceptance(eagle, samples, batch_size=config.generate_batch,
                                 max_new_tokens=config.max_new_tokens)
    profile.data.update(seed=config.data_seed + 1, seconds=round(time.perf_counter() - t0, 1))
    path = profile.save(head_dir)
    log(f"acceptance profile of {len(profile.taus)} trees on {len(samples)} held-out prompts: {path}")
    return path
