"""The draft tree sized to the machine (as Sequoia does for static trees): pick the depth, top-k and total tokens
that maximise expected tokens per second = tau(tree) / cycle time(tree).

- tau(tree), the mean acceptance length, belongs to the head and the data, not to the machine (greedy tokens are
  deterministic): it is measured once per head on held-out prompts for every candidate tree and stored beside the
  head (``acceptance.json``, written by ``eagle-train`` or ``measure_acceptance``).
- The cycle time belongs to the machine: what one draft round of k nodes, the verification of n nodes and the fixed
  rest of a cycle cost here, at this batch size, thread count and dtype. ``measure_costs`` times them on random
  cache contents in about two seconds (interleaved repeats, the fastest of each), and the result is cached per machine, model,
  head, dtype, threads and batch size.

cycle(depth, top_k, total) = draft(top_k) + (depth - 1) x round(top_k) + verify(total + 1) + feed, with ``verify``
interpolated between the measured sizes. ``choose_tree`` is a pure function of the two, so the choice is
reproducible from what ``describe()`` reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..errors import LlavaAccelError
from .decoding import EagleDecoder, TreeConfig
from .tree import Tree, ancestor_mask

PROFILE_FILE = "acceptance.json"
CACHE_FILE = "eagle_trees.json"
DEPTHS = tuple(range(1, 9))
TOP_KS = (1, 2, 3, 4)
TOTALS = (2, 4, 6, 8, 10, 12, 16, 24)
VERIFY_SIZES = (1, 2, 4, 8, 16, 32)  # nodes per row, the root included
FEED_WIDTH = 4  # accepted tokens fed back to the head per cycle (about the shipped head's tau)
DRAFT_DEPTH = 5  # draft rounds are timed as (draft of this depth - draft of depth 1) / (DRAFT_DEPTH - 1)
PREFIX = 128  # valid cache entries while timing (a short prompt with its image)
BUDGET_S = 1.5  # time spent timing, after one warm-up pass
CYCLE_VERSION = 2  # part of the cache key: bumped when the decoding loop's costs change (2: the chain's own draft)
THREAD_MARGIN = 1.1  # more threads for the cycles only when their expected tokens per second are this much higher


def candidate_trees() -> list[TreeConfig]:
    """Every tree the profile measures: chains of each depth, and for top_k >= 2 each total of ``TOTALS`` that the
    depth can hold and use (a node at depth d needs d kept nodes, so total >= depth)."""
    trees = [TreeConfig.chain(d) for d in DEPTHS]
    for k in TOP_KS[1:]:
        for d in DEPTHS:
            most = k + (d - 1) * k * k
            trees += [TreeConfig(d, k, n) for n in TOTALS if d <= n <= most]
    return trees


def tree_key(tree: TreeConfig) -> str:
    return f"{tree.depth},{tree.top_k},{tree.total_tokens}"


@dataclass
class AcceptanceProfile:
    """Mean acceptance length (tokens per verification per row, bonus included) of each candidate tree."""

    taus: dict[str, float]  # tree_key -> tau
    data: dict[str, Any] = field(default_factory=dict)  # what it was measured on

    def trees(self) -> list[tuple[TreeConfig, float]]:
        return [(TreeConfig(*map(int, key.split(","))), tau) for key, tau in self.taus.items()]

    def save(self, head_dir: str | Path) -> Path:
        path = Path(head_dir) / PROFILE_FILE
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, head_dir: str | Path) -> AcceptanceProfile | None:
        path = Path(head_dir) / PROFILE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None


@dataclass
class CycleCosts:
    """Milliseconds of the parts of one draft-verify cycle for a whole batch on this machine."""

    batch: int
    threads: int  # torch threads during the cycles
    draft_ms: dict[int, float]  # by top_k: the draft of depth 1 (the root's top-k, tree selection)
    round_ms: dict[int, float]  # by top_k: each further draft round (one head forward over k nodes per row)
    verify_ms: dict[int, float]  # by nodes per row (root included): target forward, acceptance, KV compaction
    feed_ms: float  # the head's catch-up on the accepted tokens

    def __post_init__(self) -> None:  # JSON keys are strings
        for name in ("draft_ms", "round_ms", "verify_ms"):
            setattr(self, name, {int(k): v for k, v in getattr(self, name).items()})

    def verify(self, n: int) -> float:
        """Piecewise linear between the measured sizes, extrapolated with the last slope beyond them."""
        sizes = sorted(self.verify_ms)
        if len(sizes) == 1:
            return self.verify_ms[sizes[0]]
        i = next((i for i in range(1, len(sizes)) if n <= sizes[i]), len(sizes) - 1)  # the segment holding n
        lo, hi = sizes[i - 1], sizes[i]
        return self.verify_ms[lo] + (self.verify_ms[hi] - self.verify_ms[lo]) * (n - lo) / (hi - lo)

    def cycle_ms(self, tree: TreeConfig) -> float:
        k = tree.top_k
        return (self.draft_ms[k] + (tree.depth - 1) * self.round_ms[k] + self.verify(tree.total_tokens + 1)
                + self.feed_ms)


@dataclass
class TreeChoice:
    tree: TreeConfig
    threads: int  # torch threads for the draft-verify cycles
    tau: float  # from the head's profile
    cycle_ms: float  # predicted from the measured costs
    expected_speedup: float  # over plain decoding: tau x verify(1) / cycle

    def as_dict(self) -> dict[str, Any]:
        return {"tree": asdict(self.tree), "threads": self.threads, "tau": self.tau, "cycle_ms": round(self.cycle_ms, 4),
                "expected_speedup": round(self.expected_speedup, 3)}


def choose_tree(costs: CycleCosts | list[CycleCosts], profile: AcceptanceProfile) -> TreeChoice:
    """The profiled tree, and thread count among those measured, with the most expected tokens per second
    (tau / cycle time); ties go to the smaller tree. More threads must win by ``THREAD_MARGIN``: their timings
    swing most when other work shares the cores. ``expected_speedup`` compares with plain decoding at the same
    thread count: one token per target forward of one node."""
    best = []
    for c in sorted(costs if isinstance(costs, list) else [costs], key=lambda c: c.threads):
        tree, tau = max(profile.trees(), key=lambda item: (item[1] / c.cycle_ms(item[0]), -item[0].total_tokens,
                                                           -item[0].depth))
        best.append((tau / c.cycle_ms(tree), c, tree, tau))
    rate, c, tree, tau = best[0]
    for other in best[1:]:
        if other[0] > THREAD_MARGIN * rate:
            rate, c, tree, tau = other
    cycle = c.cycle_ms(tree)
    return TreeChoice(tree, c.threads, tau, cycle, tau * c.verify(1) / cycle)


# -- measuring ---------------------------------------------------------------------------------------------------
def _heap_tree(batch: int, n: int, device: torch.device) -> tuple[Tree, int]:
    """A tree of ``n`` nodes (node i's parent (i - 1) // 2) with random tokens: a stand-in of the same size."""
    index = torch.arange(n, device=device)
    parents = ((index - 1) // 2).clamp(min=0).expand(batch, n)
    depths = torch.log2(index.float() + 1).floor().long().expand(batch, n)
    depth = max(int(depths.max()), 1)
    tokens = torch.randint(2, 100, (batch, n), generator=torch.Generator(device=device).manual_seed(n), device=device)
    return Tree(tokens, parents, depths, ancestor_mask(parents, depth)), depth


def measure_costs(decoder: EagleDecoder, batch: int, threads: int | None = None, prefix: int = PREFIX,
                  budget_s: float = BUDGET_S) -> CycleCosts:
    """Time the parts of a cycle on random contents (``synthetic_generation``) with ``threads`` torch threads
    (default: the current count), interleaved so that other work on the machine slows every part alike. Leaves
    the decoder's counters and the thread count as they were."""
    stats, before = decoder.stats, torch.get_num_threads()
    threads = threads or before
    torch.set_num_threads(threads)
    decoder.stats = type(stats)()  # the timing runs count here, then are dropped
    try:
        # all under inference mode: views of tensors made outside it cost ~30x more per op inside it
        with torch.inference_mode():
            parts = _cycle_parts(decoder, batch, prefix)
            times = _interleaved(parts, decoder._clock, budget_s)
    finally:
        decoder.stats = stats
        torch.set_num_threads(before)
    draft_ms = _monotone({k: times[("draft", 1, k)] for k in TOP_KS})
    deep = _monotone({k: times[("draft", DRAFT_DEPTH, k)] for k in TOP_KS})
    round_ms = {k: max(deep[k] - draft_ms[k], 0.0) / (DRAFT_DEPTH - 1) for k in TOP_KS}
    return CycleCosts(batch, threads, draft_ms, round_ms, _monotone({n: times[("verify", n)] for n in VERIFY_SIZES}),
                      times[("feed",)])


def _monotone(ms: dict[int, float]) -> dict[int, float]:
    """Costs that cannot fall as the size grows (more nodes never cost less): each the least measured at its size
    or above, since interference only ever adds time."""
    out, least = {}, float("inf")
    for size in sorted(ms, reverse=True):
        least = min(least, ms[size])
        out[size] = least
    return dict(sorted(out.items()))


def _cycle_parts(decoder: EagleDecoder, batch: int, prefix: int) -> dict[tuple, Callable[[], Any]]:
    """The parts of a cycle as calls that leave the state as they found it."""
    g = decoder.synthetic_generation(batch, prefix, TreeConfig(DRAFT_DEPTH, max(TOP_KS), max(VERIFY_SIZES)))
    device = g.root.device
    saved = [(cache, cache.lens.clone(), cache.begin) for cache in (g.target_cache, g.head_cache)]

    def restore() -> None:
        for cache, lens, begin in saved:
            cache.lens.copy_(lens)
            cache.begin = begin

    def draft(depth: int, k: int) -> Callable[[], Any]:
        tree = TreeConfig(depth, k, depth if k == 1 else k)  # a chain of that depth, or k nodes kept

        def run() -> None:
            g.tree = tree
            decoder._draft(g, [None] * depth, stop_at_eos=False)
        return run

    def verify(n: int) -> Callable[[], Any]:
        tree, depth = _heap_tree(batch, n, device)

        def run() -> None:
            decoder._verify(g, tree, depth)
            restore()
        return run

    embeds = torch.randn(batch, FEED_WIDTH, decoder.lm.config.hidden_size, device=device, dtype=g.predicted.dtype)
    positions = g.root_positions[:, None] + torch.arange(FEED_WIDTH, device=device)
    counts = torch.full((batch,), FEED_WIDTH, dtype=torch.long, device=device)

    def feed() -> None:
        decoder._feed_head(embeds, embeds, positions, counts, g.head_cache)
        restore()

    parts: dict[tuple, Callable[[], Any]] = {("feed",): feed}
    for k in TOP_KS:
        parts[("draft", 1, k)] = draft(1, k)
        parts[("draft", DRAFT_DEPTH, k)] = draft(DRAFT_DEPTH, k)
    for n in VERIFY_SIZES:
        parts[("verify", n)] = verify(n)
    return parts


def _interleaved(parts: dict[Any, Callable[[], Any]], clock: Callable[[], float], budget_s: float
                 ) -> dict[Any, float]:
    """Milliseconds of each part, the fastest of repeated passes (one call of every part per pass): a warm-up pass,
    then as many passes as ``budget_s`` allows (3 to 30). The fastest, not the median: other work on the machine
    only ever adds time, and more often to a longer call, which would bias the ratios."""
    samples: dict[Any, list[float]] = {key: [] for key in parts}
    t0 = clock()
    for run in parts.values():
        run()
    passes = min(30, max(3, int(budget_s / max(clock() - t0, 1e-6))))
    for _ in range(passes):
        for key, run in parts.items():
            start = clock()
            run()
            samples[key].append(1e3 * (clock() - start))
    return {key: min(v) for key, v in samples.items()}


def measure_acceptance(backend: Any, samples: Iterable, trees: Iterable[TreeConfig] | None = None,
                       batch_size: int = 16, max_new_tokens: int = 32, log: Callable[[str], None] = lambda s: None
                       ) -> AcceptanceProfile:
    """tau of every candidate tree on ``samples`` with an ``eagle`` backend's head (greedy: the same tokens for
    every tree; only the acceptance differs)."""
    samples = list(samples)
    if not samples:
        raise LlavaAccelError("measuring an acceptance profile needs at least one sample")
    decoder, taus = backend.decoder, {}
    kept = decoder.stats
    try:
        for tree in trees or candidate_trees():
            decoder.stats = type(kept)()
            for i in range(0, len(samples), batch_size):
                chunk = samples[i:i + batch_size]
                inputs = backend.prepare([s.image for s in chunk], [s.prompt for s in chunk])
                with torch.inference_mode():
                    decoder.generate(inputs, max_new_tokens, tree=tree)
            taus[tree_key(tree)] = round(decoder.stats.mean_acceptance_length, 4)
            log(f"tree {tree_key(tree)}: tau {taus[tree_key(tree)]:.3f}")
    finally:
        decoder.stats = kept
    data = {"samples": len(samples), "tasks": sorted({getattr(s, "task", "") for s in samples} - {""}),
            "max_new_tokens": max_new_tokens, "dtype": str(backend.dtype).removeprefix("torch.")}
    return AcceptanceProfile(taus, data)


# -- the per-machine cache ---------------------------------------------------------------------------------------
def machine_name(device: torch.device) -> str:
    from ..metrics.mfu import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cache_key(device: torch.device, model: str, dtype: torch.dtype, head: str, batch: int, threads: int) -> str:
    return (f"{machine_name(device)}|threads={threads}|torch {torch.__version__}|cycle v{CYCLE_VERSION}|model={model}|"
            f"{str(dtype).removeprefix('torch.')}|head={head}|batch={batch}")


def thread_options(device: torch.device) -> list[int]:
    """Thread counts worth timing the cycles at: the current one and, on a multi-core CPU, one. A small model's
    verification can lose more to waking a second core than it gains (the ops are microseconds long)."""
    return sorted({1, torch.get_num_threads()}) if device.type == "cpu" else [torch.get_num_threads()]


def cached_costs(key: str, measure: Callable[[], CycleCosts]) -> tuple[CycleCosts, bool]:
    """The costs stored under ``key`` in the user's cache folder, or ``measure()`` stored there; (costs, measured
    now). A read-only home measures again next time."""
    from ..metrics.mfu import cache_dir

    path = cache_dir() / CACHE_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    if key in stored:
        try:
            return CycleCosts(**stored[key]["costs"]), False
        except (KeyError, TypeError):
            pass  # written by another version: measure again
    costs = measure()
    stored[key] = {"costs": asdict(costs), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=1))
    except OSError:
        pass
    return costs, True
