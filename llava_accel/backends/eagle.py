"""``eagle``: lossless speculative decoding with an EAGLE draft head and an EAGLE-2 dynamic draft tree.

Same model, preprocessing, device and dtype as ``eager`` (on a CPU, without a dtype: the ``cpu`` backend's dtype);
only token generation differs (``llava_accel.eagle``): the head drafts a tree of likely continuations from the
target's own features, the target verifies the whole tree in one forward, and the longest path that matches the
target's greedy choices is kept, plus one token of the target's. The output is the target's greedy output; the
speed-up depends on how many tokens each verification keeps (``stats()["mean_acceptance_length"]``).

``tree="auto"`` sizes the draft tree to the machine (``llava_accel.eagle.sizing``): per batch size, the measured cost
of draft rounds and verifications here, combined with the head's measured acceptance profile, picks the depth, top-k
and total tokens with the most expected tokens per second. The default stays the fixed (6, 2, 10) tree, which
measured as fast or faster (docs/eagle.md).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import gemv
from ..eagle.decoding import EagleDecoder, TreeConfig
from ..eagle.head import DEFAULT_HEAD, TRAIN_HINT, HeadError, load_head, random_head
from ..eagle.sizing import (PROFILE_FILE, AcceptanceProfile, TreeChoice, cache_key, cached_costs, choose_tree,
                            measure_costs, thread_options)
from ..errors import BackendUnavailableError, OptionError
from ..lean.greedy import unsupported_reason
from ..models.loading import DEFAULT_MODEL, LoadedModel
from .cpu import cpu_dtype, cpu_linears, weights_in_huge_pages
from .eager import EagerBackend

TREES = ("auto", "dynamic", "chain")


class EagleBackend(EagerBackend):
    name = "eagle"
    default_device = "cuda"
    default_dtype = "float16"
    device_map_refusal = ("the draft head, its tree KV cache and the verification pass assume the whole model on "
                          "one device; use 'eager' (or 'flash') with device_map")

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, attention: str | None = None, head: str | None = None,
                 tree: str = "dynamic", depth: int | None = None, top_k: int | None = None,
                 total_tokens: int | None = None, no_weights: bool = False, upcast: bool | None = None) -> None:
        """``head``: a folder written by eagle-train, or "random" (a seeded random head: for the cost of speculation and
        its losslessness only, e.g. with ``no_weights``). ``upcast``: on a CPU, as the ``cpu`` backend's.
        ``tree``: "dynamic" (EAGLE-2 with ``depth``, ``top_k``, ``total_tokens``; defaults 6, 2, 10), "auto" (sized to
        this machine per batch size from measured costs and the head's acceptance profile; any of ``depth``, ``top_k``,
        ``total_tokens`` given makes it "dynamic") or "chain"."""
        if tree not in TREES:
            raise OptionError(f"unknown draft tree '{tree}'; use one of {', '.join(TREES)}")
        if tree == "auto" and (depth or top_k or total_tokens):
            tree = "dynamic"
        defaults = TreeConfig() if tree != "chain" else TreeConfig.chain()
        depth = depth or defaults.depth
        self.tree_mode = tree
        self.tree = (TreeConfig.chain(depth) if tree == "chain" else
                     TreeConfig(depth, top_k or defaults.top_k, total_tokens or defaults.total_tokens))
        if dtype is None and torch.device(device or self.default_device).type == "cpu":
            dtype = cpu_dtype(model)[0]  # the `cpu` backend's: fp16 on a CPU is emulated, and not what it compares with
        super().__init__(model, device, dtype, attention, no_weights=no_weights)
        # on a CPU, the same prefill as the `cpu` backend's
        on_cpu = self.device.type == "cpu"
        self.upcast, self.gemv = cpu_linears(self, upcast, speculative=True) if on_cpu else ("off", "torch's kernels")
        self.huge_pages = weights_in_huge_pages(self, None) if on_cpu else "off: not on the CPU"
        self.verify_attention = (f"our kernel (llava_accel.gemv.attend) up to {gemv.ATTEND_MAX_QUERIES} tree tokens, "
                                 "else sdpa") if on_cpu and not gemv.unavailable_reason() else "sdpa"
        reason = unsupported_reason(self.model)  # the loop runs the lean layers: generate's tokens only where they apply
        if reason:
            raise BackendUnavailableError(f"backend 'eagle' cannot decode '{self.loaded.model_id}' exactly as generate "
                                          f"does: {reason}; use 'eager'")
        if head is None and Path(self.loaded.path).resolve() != Path(DEFAULT_MODEL).resolve():
            raise HeadError(f"the 'eagle' backend needs a draft head for '{self.loaded.model_id}'; "
                            + TRAIN_HINT.format(model=self.loaded.model_id)
                            + (" (or head='random', CLI --head random, to time it)" if no_weights else ""))
        self.head_path = str(head or DEFAULT_HEAD)
        self.head, self.head_config = random_head(self.model, self.loaded.model_id) if head == "random" else \
            load_head(self.head_path, self.model, self.loaded.model_id)
        tokenizer = self.processor.tokenizer
        self.decoder = EagleDecoder(self.model, self.head, self.tree, tokenizer.eos_token_id, tokenizer.pad_token_id)
        self.profile = AcceptanceProfile.load(self.head_path) if tree == "auto" and head != "random" else None
        self.choices: dict[int, TreeChoice] = {}  # batch size -> the tree sized for it
        self.sizing: dict[int, dict[str, Any]] = {}  # batch size -> cache key and whether measured now
        if self.profile is not None:
            self._choice(1)  # batch 1 sized at load; other sizes on first use

    def tree_for(self, batch: int) -> TreeConfig:
        """The draft tree for ``batch`` rows: sized to this machine (measured once, then cached) or the fixed one."""
        return self._choice(batch).tree if self.profile is not None else self.tree

    def _choice(self, batch: int) -> TreeChoice:
        if batch not in self.choices:
            model = f"{self.head_config.target} {self.head_config.fingerprint[:4]}"
            head = str(Path(self.head_path).resolve())
            measured, sizing = [], {}
            for threads in thread_options(self.device):
                key = cache_key(self.device, model, self.dtype, head, batch, threads)
                costs, now = cached_costs(key, lambda: measure_costs(self.decoder, batch, threads))
                measured.append(costs)
                sizing[threads] = {"cache_key": key, "measured_now": now, "costs": asdict(costs)}
            self.choices[batch] = choose_tree(measured, self.profile)
            self.sizing[batch] = sizing
        return self.choices[batch]

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        if self.profile is None:
            return self.decoder.generate(inputs, max_new_tokens, min_new_tokens, streamer)
        choice = self._choice(inputs["input_ids"].shape[0])
        return self.decoder.generate(inputs, max_new_tokens, min_new_tokens, streamer, tree=choice.tree,
                                     threads=choice.threads)

    def stats(self) -> dict[str, Any]:
        """Acceptance and cost counters since the last ``reset_stats()`` (see ``EagleStats`` for definitions)."""
        return self.decoder.stats.as_dict()

    def reset_stats(self) -> None:
        self.decoder.stats = type(self.decoder.stats)()

    def describe(self) -> dict[str, Any]:
        """``tree``: the fixed tree, or with ``tree_mode`` "auto" the tree chosen for batch 1; ``trees``: for every
        batch size sized so far, the choice (tree, threads for the cycles, tau, predicted cycle ms and speed-up) and,
        per thread count timed, the measured costs and the cache key they are stored under."""
        out = {**super().describe(), "head": self.head_path, "head_target": self.head_config.target,
               "tree_mode": self.tree_mode, "verify_attention": self.verify_attention, "upcast": self.upcast,
               "gemv": self.gemv, "huge_pages": self.huge_pages}
        if self.tree_mode == "auto" and self.profile is None:
            return {**out, "tree": asdict(self.tree), "tree_reason": f"default tree: the head has no acceptance "
                    f"profile ({PROFILE_FILE}; eagle-train writes one) to size a tree with"}
        if self.profile is None:
            return {**out, "tree": asdict(self.tree)}
        first = self.choices.get(1) or next(iter(self.choices.values()))
        return {**out, "tree": asdict(first.tree),
                "trees": {b: {**c.as_dict(), "measured": self.sizing[b]} for b, c in sorted(self.choices.items())}}
