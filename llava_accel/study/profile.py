"""Per-layer profile: the time and FLOPs of each part of LLaVA, for the prefill and for one decode step, per batch size.

The reference study says in prose that the convolutions are "fairly heavy", that the model "scales normally" with
the batch and that "the image size is fixed". This module answers each with numbers. Every listed module is timed
inside the real forward (torch.profiler ranges opened and closed by module hooks on a CPU; CUDA events on a GPU, as
the kernels run asynchronously), its FLOPs are counted in a separate untimed pass, and for each module we fit
time = a + b x batch by least squares: ``a`` is the cost that batching amortises, ``b`` the cost of each sample.
Times are means over the faster half of ``repeats`` forwards after a warm-up (runs slowed by other processes are
left out); the whole forward is timed in the same runs, so the parts and what each container spends outside its
listed children ("outside listed modules": Python, masks, merging image features) add up to it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..checks import non_negative_int, positive_int
from ..errors import OptionError
from ..metrics.flops import flop_counter, image_token_id
from ..metrics.mfu import cpu_model, device_peak
from ..quiet import drop_stderr_lines
from ..models.compat import cache_kwarg, output_cache
from .tables import format_table

FORWARD = "forward"
OUTSIDE = "outside listed modules"
PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Part:
    """A module we time. Which part runs inside which is observed while the forward runs, not assumed."""

    name: str
    kind: str


def model_parts(model: Any) -> list[tuple[Part, torch.nn.Module]]:
    """The modules of a LLaVA model to time. The outermost (LlavaModel, then the LM head) cover the whole forward
    but the wrapper's Python; inside LlavaModel, what is outside the token embedding, vision tower, projector and
    language model is LLaVA's glue (merging image features, Python), a visible share of a tiny model's forward."""
    inner = model.model
    tower = inner.vision_tower
    vision = getattr(tower, "vision_model", tower)  # transformers < 5.20 nests the CLIP transformer
    lm = inner.language_model
    parts = [(Part("model", "LlavaModel"), inner), (Part("vision", "vision tower"), tower),
             (Part("vision.embeddings", "vision embeddings"), vision.embeddings),
             (Part("vision.patch_embedding", "patch-embedding conv"), vision.embeddings.patch_embedding),
             (Part("vision.pre_layernorm", "norm"), vision.pre_layrnorm)]
    parts += [(Part(f"vision.layers.{i}", "vision layer"), layer) for i, layer in enumerate(vision.encoder.layers)]
    parts += [(Part("vision.post_layernorm", "norm"), vision.post_layernorm),
              (Part("projector", "projector"), inner.multi_modal_projector),
              (Part("language", "language model"), lm),
              (Part("language.embed_tokens", "token embedding"), lm.embed_tokens)]
    if getattr(lm, "rotary_emb", None) is not None:
        parts.append((Part("language.rotary_emb", "rotary embedding"), lm.rotary_emb))
    for i, layer in enumerate(lm.layers):
        name = f"language.layers.{i}"
        parts += [(Part(name, "language layer"), layer), (Part(f"{name}.attention", "attention"), layer.self_attn),
                  (Part(f"{name}.mlp", "mlp"), layer.mlp)]
    parts += [(Part("language.norm", "norm"), lm.norm), (Part("lm_head", "lm head"), model.lm_head)]
    return parts


# -- timers: same interface, one per device kind ----------------------------------------------------------------
class ProfilerTimer:
    """CPU: each module call is a ``torch.profiler`` range; its CPU time is the module's wall time on this thread."""

    source = "torch.profiler ranges (CPU time)"
    PREFIX = "llava_accel::"

    def __init__(self) -> None:
        self._open: dict[str, list] = {}
        self._prof = None

    @contextmanager
    def session(self) -> Iterator[None]:
        with drop_stderr_lines(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            yield
        self._prof = prof

    def start(self, name: str) -> None:
        rf = torch.profiler.record_function(self.PREFIX + name)
        rf.__enter__()
        self._open.setdefault(name, []).append(rf)

    def stop(self, name: str) -> None:
        self._open[name].pop().__exit__(None, None, None)

    def calls(self) -> dict[str, list[float]]:
        """name -> seconds of each call."""
        out: dict[str, list[float]] = {}
        events = sorted((ev for ev in self._prof.events() if ev.name.startswith(self.PREFIX)),
                        key=lambda ev: ev.time_range.start)  # call order, so that run r of every module aligns
        for ev in events:
            out.setdefault(ev.name[len(self.PREFIX):], []).append(ev.time_range.elapsed_us() / 1e6)
        return out


class CudaEventTimer:
    """GPU: a CUDA event before and after each module call; elapsed device time between them once synchronised."""

    source = "CUDA events (device time)"

    def __init__(self) -> None:
        self._open: dict[str, list] = {}
        self._pairs: dict[str, list] = {}

    @contextmanager
    def session(self) -> Iterator[None]:
        yield
        torch.cuda.synchronize()

    def start(self, name: str) -> None:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        self._open.setdefault(name, []).append(ev)

    def stop(self, name: str) -> None:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pairs.setdefault(name, []).append((self._open[name].pop(), end))

    def calls(self) -> dict[str, list[float]]:
        return {n: [s.elapsed_time(e) / 1e3 for s, e in pairs] for n, pairs in self._pairs.items()}


@contextmanager
def _hooks(parts: list[tuple[Part, torch.nn.Module]], timer: ProfilerTimer | CudaEventTimer,
           parents: dict[str, str | None]) -> Iterator[None]:
    """Time every part on each call, and record in ``parents`` the part each one first ran inside."""
    stack: list[str] = []

    def enter(name: str) -> None:
        parents.setdefault(name, stack[-1] if stack else None)
        stack.append(name)
        timer.start(name)

    def leave(name: str) -> None:
        timer.stop(name)
        stack.pop()

    handles = []
    for part, module in parts:
        handles.append(module.register_forward_pre_hook(lambda m, a, n=part.name: enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=part.name: leave(n)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- results ----------------------------------------------------------------------------------------------------
@dataclass
class Fit:
    """time = a + b x batch, least squares over the profiled batch sizes; r2 = 1 means exactly linear."""

    a_s: float
    b_s: float
    r2: float


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return Fit(a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)


@dataclass
class PartResult:
    """One module in one phase. Lists are aligned with the profile's ``batch_sizes``."""

    name: str
    kind: str
    parent: str | None
    seconds: list[float]  # per forward (mean over the faster half of the repeats)
    flops: list[float]  # per forward, 2 FLOPs per multiply-add
    fit: Fit | None = None
    spread_s: list[float] = field(default_factory=list)  # standard deviation over those runs (empty: not recorded)


@dataclass
class PhaseResult:
    phase: str  # "prefill" (vision tower + projector + language model over the prompt) or "decode" (one token)
    tokens: list[int]  # sequence length fed to the language model (per row, padded), per batch size
    whole_s: list[float]  # the whole forward, timed in the same runs as the parts
    unprofiled_s: list[float]  # the whole forward with no hooks and no profiler: the timer's overhead is the gap
    flops: list[float]
    parts: list[PartResult] = field(default_factory=list)
    whole_spread_s: list[float] = field(default_factory=list)  # whole_s's standard deviation over the same runs

    def part(self, name: str) -> PartResult:
        return next(p for p in self.parts if p.name == name)


@dataclass
class LayerProfile:
    backend: dict[str, Any]  # backend.describe(): what ran
    timer: str
    batch_sizes: list[int]
    repeats: int
    task: str
    img_size: int | None  # None: the model's native size
    image_tokens: int
    phases: list[PhaseResult]
    machine: str = ""
    peak_flops_per_s: float | None = None  # the device's peak in its fastest dtype (metrics.mfu)
    peak_source: str = ""
    flop_counter: str = "torch.utils.flop_counter.FlopCounterMode (2 FLOPs per multiply-add), attention included"

    def phase(self, name: str) -> PhaseResult:
        return next(p for p in self.phases if p.phase == name)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "profile", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerProfile:
        phases = []
        for ph in d["phases"]:
            parts = [PartResult(**{**p, "fit": Fit(**p["fit"]) if p.get("fit") else None}) for p in ph["parts"]]
            phases.append(PhaseResult(**{**ph, "parts": parts}))
        return cls(**{k: v for k, v in d.items() if k != "kind"} | {"phases": phases})

    def formatted(self, fmt: str) -> str:
        """The per-layer tables as Markdown (one per phase), or CSV / JSON rows (the phase a column)."""
        from ..formats import render

        if fmt == "md":
            return "\n\n".join(f"**{ph.phase}**\n\n" + format_table(*layer_table(self, ph.phase))
                                 for ph in self.phases)
        rows = []
        for ph in self.phases:
            header, body = layer_table(self, ph.phase)
            rows += [{"phase": ph.phase, **dict(zip(header, [c.strip() for c in line]))} for line in body]
        return render(rows, fmt)

    def table(self) -> str:
        """A plain-text table per phase, the largest batch size's share and FLOP/s."""
        out = [f"per-layer profile: {self.backend.get('backend')} on {self.backend.get('device')} "
               f"({self.backend.get('dtype')}), model {self.backend.get('model')} [{self.backend.get('weights')}]; "
               f"{self.image_tokens} image tokens; timer: {self.timer}; "
               f"mean of the faster half of {self.repeats} forwards"]
        for ph in self.phases:
            out.append("")
            out.append(format_table(*layer_table(self, ph.phase), markdown=False))
        return "\n".join(out)


def layer_table(profile: LayerProfile, phase: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-module table of one phase (used by the CLI and by the report)."""
    ph = profile.phase(phase)
    bs, last = profile.batch_sizes, len(profile.batch_sizes) - 1
    header = (["module", "kind", f"GFLOP @bs{bs[last]}"] + [f"ms @bs{b}" for b in bs]
              + ["a ms", "b ms/sample", "R²", f"share @bs{bs[last]}", f"GFLOP/s @bs{bs[last]}"])
    whole = PartResult(FORWARD, "whole forward", None, ph.whole_s, ph.flops, fit_line(bs, ph.whole_s))
    rows = []

    def row(p: PartResult, depth: int) -> list[str]:
        rate = p.flops[last] / p.seconds[last] / 1e9 if p.seconds[last] > 0 else float("nan")
        fit = p.fit
        return ([("  " * depth) + p.name, p.kind, f"{p.flops[last] / 1e9:.4g}"] + [f"{s * 1e3:.3f}" for s in p.seconds]
                + ([f"{fit.a_s * 1e3:.3f}", f"{fit.b_s * 1e3:.3f}", f"{fit.r2:.3f}"] if fit else ["", "", ""])
                + [f"{p.seconds[last] / ph.whole_s[last]:.1%}", f"{rate:.3g}"])

    def walk(parent: PartResult | None, depth: int) -> None:
        children = [p for p in ph.parts if p.parent == (parent.name if parent else None)]
        for child in children:
            rows.append(row(child, depth))
            walk(child, depth + 1)
        container = parent or whole
        if children:  # what the container spends outside its listed children (Python, masks, merging)
            rows.append(row(rest(container, children, bs), depth))

    walk(None, 0)
    rows.append(row(whole, 0))
    return header, rows


def rest(container: PartResult, children: list[PartResult], batch_sizes: Sequence[int]) -> PartResult:
    """The time and FLOPs of ``container`` outside ``children``."""
    seconds = [t - sum(c.seconds[i] for c in children) for i, t in enumerate(container.seconds)]
    flops = [f - sum(c.flops[i] for c in children) for i, f in enumerate(container.flops)]
    name = OUTSIDE if container.name == FORWARD else f"{container.name}: {OUTSIDE}"
    return PartResult(name, "glue", container.name, seconds, flops, fit_line(batch_sizes, seconds))


# -- running ----------------------------------------------------------------------------------------------------
def _steady_runs(whole: list[float]) -> list[int]:
    """The faster half of the timed forwards: a run slowed by another process on the machine is left out, and the
    parts and the whole are averaged over the same runs, so they still add up."""
    order = sorted(range(len(whole)), key=whole.__getitem__)
    return sorted(order[: (len(whole) + 1) // 2])


def _mean_over(calls: list[float], runs: list[int], repeats: int) -> float:
    """Mean time per forward over ``runs`` of a module called ``len(calls) / repeats`` times per forward."""
    if not calls:
        return 0.0
    per_run = len(calls) // repeats
    return sum(sum(calls[r * per_run:(r + 1) * per_run]) for r in runs) / len(runs)


def _spread_over(calls: list[float], runs: list[int], repeats: int) -> float:
    """Standard deviation over ``runs`` of a module's time per forward (0 with fewer than 2 runs)."""
    if not calls or len(runs) < 2:
        return 0.0
    per_run = len(calls) // repeats
    return statistics.stdev(sum(calls[r * per_run:(r + 1) * per_run]) for r in runs)


def _mean_time(run: Callable[[], Any], repeats: int, device: torch.device,
               reset: Callable[[], None] | None = None) -> float:
    """Mean wall time of ``run`` with nothing attached (the reference for the timers' overhead); ``reset``, untimed,
    restores the state after each run."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    total = 0.0
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        total += time.perf_counter() - t0
        if reset:
            reset()
    return total / max(repeats, 1)


def _module_flops(model: Any, run: Callable[[], Any],
                  parts: list[tuple[Part, torch.nn.Module]]) -> tuple[float, dict[str, float]]:
    """FLOPs of one forward and of each part, in an untimed pass (attention kernels included whatever their
    implementation: see ``metrics.flops``)."""
    names = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__
    with flop_counter() as counter:
        run()
    counts = counter.get_flop_counts()
    per_part = {p.name: float(sum(counts.get(f"{root}.{names[id(m)]}", {}).values())) for p, m in parts}
    return float(counter.get_total_flops()), per_part


def profile_layers(backend: Any, samples: Sequence[Any], batch_sizes: Sequence[int] = (1, 4, 8, 16),
                   img_size: int | None = None, repeats: int = 5, warmup: int = 1) -> LayerProfile:
    """Profile ``backend``'s model on the first ``b`` samples for each batch size ``b`` (prefill and one decode step).

    ``samples`` are ``la.Sample``s (their images and prompts are prepared exactly as the backend does for
    generation). The prefill computes logits for the last position only, as ``generate`` does.
    """
    positive_int(repeats, "repeats")
    non_negative_int(warmup, "warmup")
    if not batch_sizes:
        raise OptionError("batch_sizes is empty; pass one or more, like (1, 4, 8, 16)")
    batch_sizes = sorted({positive_int(b, "each batch size") for b in batch_sizes})
    if not samples:
        raise OptionError("no samples to profile")
    if len(samples) < max(batch_sizes):
        samples = [samples[i % len(samples)] for i in range(max(batch_sizes))]
    model, device = backend.model, backend.device
    timer_cls = CudaEventTimer if device.type == "cuda" else ProfilerTimer
    parts = model_parts(model)
    kinds = {p.name: p.kind for p, _ in parts}
    cache_arg = cache_kwarg(model)
    phases = {ph: PhaseResult(ph, [], [], [], []) for ph in PHASES}
    per_phase: dict[str, dict[str, PartResult]] = {ph: {} for ph in PHASES}
    image_tokens = 0
    for b in batch_sizes:
        inputs = backend.prepare([s.image for s in samples[:b]], [s.prompt for s in samples[:b]], img_size=img_size)
        image_tokens = int((inputs["input_ids"][0] == image_token_id(model.config)).sum())
        length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            cache = output_cache(out)
            step = {"input_ids": out.logits[:, -1].argmax(-1, keepdim=True),
                    "attention_mask": torch.cat([inputs["attention_mask"],
                                                 inputs["attention_mask"].new_ones(b, 1)], dim=1),
                    cache_arg: cache, "use_cache": True, "logits_to_keep": 1}

            def prefill() -> Any:
                return model(**inputs, use_cache=True, logits_to_keep=1)  # a fresh KV cache, as generate fills

            def decode() -> Any:
                return model(**step)

            def uncache() -> None:
                cache.crop(-1)  # drop the decoded token: the next repeat decodes the same position again

            for phase, run, reset, tokens in (("prefill", prefill, None, length), ("decode", decode, uncache, 1)):
                ph = phases[phase]
                ph.tokens.append(tokens)
                _mean_time(run, warmup, device, reset)
                ph.unprofiled_s.append(_mean_time(run, repeats, device, reset))
                timer, parents = timer_cls(), {}
                with _hooks(parts, timer, parents), timer.session():
                    for _ in range(repeats):
                        timer.start(FORWARD)
                        run()
                        timer.stop(FORWARD)
                        if reset:
                            reset()
                calls = timer.calls()
                kept = _steady_runs(calls[FORWARD])
                ph.whole_s.append(_mean_over(calls[FORWARD], kept, repeats))
                ph.whole_spread_s.append(_spread_over(calls[FORWARD], kept, repeats))
                total, flops = _module_flops(model, run, parts)
                if reset:
                    reset()
                ph.flops.append(total)
                for name, parent in parents.items():  # the parts that ran, in the order they started
                    pr = per_phase[phase].setdefault(name, PartResult(name, kinds[name], parent, [], []))
                    pr.seconds.append(_mean_over(calls[name], kept, repeats))
                    pr.spread_s.append(_spread_over(calls[name], kept, repeats))
                    pr.flops.append(flops[name])
    for phase, ph in phases.items():
        ph.parts = list(per_phase[phase].values())
        for pr in ph.parts:
            pr.fit = fit_line(batch_sizes, pr.seconds)
    peak = device_peak(device)
    return LayerProfile(backend=backend.describe(), timer=timer_cls.source, batch_sizes=list(batch_sizes),
                        repeats=repeats, task=samples[0].task if samples else "", img_size=img_size,
                        image_tokens=image_tokens, phases=list(phases.values()), machine=_machine(device),
                        peak_flops_per_s=peak.flops_per_s, peak_source=peak.source)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


# -- the reference study's claims, answered with numbers --------------------------------------------------------
HEAVY_SHARE = 0.05  # a part is "heavy" above this share of the prefill forward
LINEAR_R2 = 0.98  # time = a + b x batch "fits" at or above this R²
COMPONENTS = (("prefill", "vision", "vision tower"), ("prefill", "projector", "projector"),
              ("prefill", "language", "language model (prefill)"), ("prefill", "lm_head", "LM head (prefill)"),
              ("decode", "language", "language model (one decode step)"))


def _ms(seconds: float) -> str:
    """Milliseconds as a plain number (no 1.28e+03)."""
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if abs(ms) >= 100 else f"{ms:.3g} ms"


def _noise(spreads: Sequence[float]) -> float | None:
    """Two standard deviations of the noisier measurement: a difference smaller than this is not a finding."""
    return 2 * max(spreads) if spreads else None


def answer_claims(profiles: Sequence[LayerProfile]) -> list[str]:
    """Markdown paragraphs answering the reference study's three prose claims from measured profiles."""
    groups: dict[tuple, list[LayerProfile]] = {}
    for p in profiles:
        b = p.backend
        groups.setdefault((b.get("backend"), b.get("device"), b.get("dtype"), b.get("model")), []).append(p)
    out = []
    for (backend, device, dtype, model), group in groups.items():
        group = sorted(group, key=lambda p: p.image_tokens)
        base = group[-1]
        out.append(f"**{backend} on {device} ({dtype}), {model}** [{base.backend.get('weights')}], "
                   f"{base.machine}:")
        out += [_conv_claim(base), _batch_claim(base), _image_claim(group)]
    return out


def _conv_claim(p: LayerProfile) -> str:
    pre = p.phase("prefill")
    names = {x.name: x for x in pre.parts}
    conv = names.get("vision.patch_embedding")
    if conv is None:
        return "- *Is the convolution heavy?* No patch-embedding convolution was profiled."
    layers = [x for x in pre.parts if x.kind == "vision layer"]
    lines = []
    for i, b in enumerate(p.batch_sizes):
        share, fshare = conv.seconds[i] / pre.whole_s[i], conv.flops[i] / pre.flops[i] if pre.flops[i] else 0.0
        layer = statistics.fmean(x.seconds[i] for x in layers) if layers else float("nan")
        lines.append(f"batch {b}: {_ms(conv.seconds[i])} = {share:.1%} of the prefill "
                     f"({conv.flops[i] / 1e9:.3g} GFLOP = {fshare:.1%} of its FLOPs; "
                     f"{conv.seconds[i] / layer:.2g}x one vision layer)")
    typical = statistics.median(conv.seconds[i] / pre.whole_s[i] for i in range(len(p.batch_sizes)))
    verdict = (("Heavy" if typical >= HEAVY_SHARE else "Not heavy")
               + f": its median share over the batch sizes is {typical:.1%} (heavy: above {HEAVY_SHARE:.0%})")
    return f"- *Is the convolution heavy?* {verdict}. " + "; ".join(lines) + "."


def _batch_claim(p: LayerProfile) -> str:
    if len(p.batch_sizes) < 2:
        return "- *Does each part scale linearly with batch?* Needs 2 or more batch sizes."
    b0, b1 = p.batch_sizes[0], p.batch_sizes[-1]
    lines = []
    for phase, name, label in COMPONENTS:
        part = next((x for x in p.phase(phase).parts if x.name == name), None)
        if part is None or part.fit is None:
            continue
        fit, t0, t1 = part.fit, part.seconds[0], part.seconds[-1]
        noise = _noise(part.spread_s)
        worst = max(abs(t - fit.a_s - fit.b_s * b) for t, b in zip(part.seconds, p.batch_sizes))
        if fit.r2 >= LINEAR_R2:
            verdict = "linear"
        elif noise is None:
            verdict = "not linear by R², but the spread was not recorded: not a finding"
        elif worst <= noise:
            verdict = f"linear within the measured spread (largest deviation {_ms(worst)} ≤ 2 sd = {_ms(noise)})"
        else:
            verdict = f"not linear (deviation {_ms(worst)} > 2 sd = {_ms(noise)})"
        if noise is not None and abs(t1 - t0) <= noise:
            verdict = f"no change with batch beyond the spread ({_ms(abs(t1 - t0))} ≤ 2 sd = {_ms(noise)})"
        lines.append(f"{label}: {_ms(t0)} at batch {b0}, {_ms(t1)} at batch {b1} ({t1 / t0:.2g}x time for "
                     f"{b1 / b0:.2g}x samples); fit a = {_ms(fit.a_s)}, b = {_ms(fit.b_s)}/sample, "
                     f"R² = {fit.r2:.3f}: {verdict}")
    return (f"- *Does each part scale linearly with batch?* (linear: R² ≥ {LINEAR_R2}, or every point within two "
            "standard deviations of the fit; a > 0 is a fixed cost that batching spreads over the samples) "
            + "; ".join(lines) + ".")


def _image_claim(group: Sequence[LayerProfile]) -> str:
    if len({p.image_tokens for p in group}) < 2:
        return ("- *What does the image size change?* Not measured here (one image size); profile at several "
                "(`img_sizes` in the spec's [profile] table, or `llava-accel profile --img-size N`).")
    lines = []
    i = len(group[0].batch_sizes) - 1
    for p in group:
        pre = p.phase("prefill")
        vision = next((x for x in pre.parts if x.name == "vision"), None)
        side = f"{p.img_size} px" if p.img_size else "native size"
        lines.append(f"{side}: {p.image_tokens} image tokens, prompt {pre.tokens[i]} tokens, vision tower "
                     f"{_ms(vision.seconds[i]) if vision else 'n/a'}, prefill {_ms(pre.whole_s[i])} "
                     f"({pre.flops[i] / 1e9:.4g} GFLOP), decode step {_ms(p.phase('decode').whole_s[i])}")
    b = group[0].batch_sizes[i]
    small, large = group[0].phase("prefill"), group[-1].phase("prefill")
    gap = large.whole_s[i] - small.whole_s[i]
    noise = _noise([ph.whole_spread_s[i] for ph in (small, large) if ph.whole_spread_s])
    if noise is None or len([ph for ph in (small, large) if ph.whole_spread_s]) < 2:
        finding = "the spread was not recorded, so the prefill difference is not a finding"
    elif abs(gap) <= noise:
        finding = (f"the prefill difference ({_ms(gap)}) is within the measured spread (2 sd = {_ms(noise)}): no "
                   "measured effect at this size")
    else:
        finding = f"the prefill difference ({_ms(gap)}) exceeds the measured spread (2 sd = {_ms(noise)})"
    return (f"- *What does the image size change?* The number of image tokens, and with it the prefill and every "
            f"decode step's attention; at batch {b}: " + "; ".join(lines) + f"; {finding}.")
