"""The EAGLE decoding loop: prefill, then draft a tree with the head, verify it in one target forward, accept.

We own the loop (gpt-fast style) and call the model's own modules: the prefill is the normal LLaVA forward (vision
tower, projector, language model), so the first token and the prompt's KV cache are exactly what ``generate``
computes; each verification runs the language model's decoder layers on the tree's tokens with a tree attention
mask and tree position ids, against a ``SlotCache``. Greedy acceptance makes the output the target's own greedy
tokens whatever the head drafts: a bad head only costs speed.

Per step, for the whole batch: draft (``depth - 1`` head forwards, all top-k nodes of a depth in one) -> verify (one
target forward over ``total_tokens + 1`` nodes) -> accept, per row, the longest path that equals the target's
choices plus one bonus token -> compact the accepted KV entries -> feed the accepted tokens with their true target
features to the head (one head forward).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import OptionError
from ..lean.cache import SlotCache
from ..lean.layer import RopeTable, decoder_layer, layer_weights, module_projection
from ..lean.prefill import prompt_positions, run_target
from .head import EagleHead
from .tree import Tree, accept, chain_tree, select_tree

MIN_LOGPROB = -1e4  # floor for draft log-probabilities, so that scores stay finite and ordered


@dataclass
class TreeConfig:
    """Shape of the draft. ``top_k=1`` with ``total_tokens=depth`` is a plain chain of ``depth`` tokens."""

    # defaults tuned on the embedded model on a 2-core CPU (docs/eagle.md): there every verified token costs
    depth: int = 6  # longest drafted path (tokens)
    top_k: int = 2  # children per expanded node, and nodes expanded per depth
    total_tokens: int = 10  # drafted nodes verified per step (the root comes on top)

    def __post_init__(self) -> None:
        most = self.top_k + (self.depth - 1) * self.top_k ** 2
        if self.depth < 1 or self.top_k < 1 or not 1 <= self.total_tokens <= most:
            raise OptionError(f"draft tree depth={self.depth}, top_k={self.top_k}, total_tokens={self.total_tokens}: "
                             f"need depth >= 1, top_k >= 1 and 1 <= total_tokens <= {most}")

    @classmethod
    def chain(cls, depth: int = 6) -> TreeConfig:
        return cls(depth=depth, top_k=1, total_tokens=depth)


@dataclass
class EagleStats:
    """Counters over every ``generate`` call since the last reset.

    ``mean_acceptance_length`` = tokens kept from verification steps / (verification steps x rows still
    generating): tokens per target forward per sequence, the bonus token included, the prefill's first token not;
    a step that reaches EOS or the token budget counts only the tokens up to it.
    """

    sequences: int = 0
    new_tokens: int = 0  # generated tokens kept (up to and including EOS)
    prefill_forwards: int = 0  # one per generate call
    verify_forwards: int = 0  # target forwards after the prefill, one per draft-verify cycle (whole batch)
    head_forwards: int = 0
    active_row_steps: int = 0  # sum over verification steps of the rows still generating
    accepted_tokens: int = 0  # tokens kept from verification steps (bonus included, none past EOS or the budget)
    prefill_s: float = 0.0
    draft_s: float = 0.0  # head forwards and tree building, including feeding accepted tokens to the head
    verify_s: float = 0.0  # target verification forwards, acceptance and KV compaction

    @property
    def target_forwards(self) -> int:
        return self.prefill_forwards + self.verify_forwards

    @property
    def mean_acceptance_length(self) -> float:
        return self.accepted_tokens / self.active_row_steps if self.active_row_steps else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_forwards": self.target_forwards,
                "mean_acceptance_length": round(self.mean_acceptance_length, 4)}


@dataclass
class _Generation:
    """The state of one ``generate`` call."""

    target_cache: SlotCache
    head_cache: SlotCache
    rows: list[list[int]]  # emitted tokens per row (EOS included)
    done: list[bool]
    root: torch.Tensor  # (batch,) last emitted token, not yet in the target's cache
    root_positions: torch.Tensor  # (batch,) its position id
    predicted: torch.Tensor  # (batch, h) the head's prediction of the target's feature at the root
    generated: torch.Tensor  # (batch,) tokens emitted so far
    max_new_tokens: int
    min_new_tokens: int
    streamer: Any
    tree: TreeConfig  # the draft tree's shape for this call
    streamed: int = 0  # columns handed to the streamer


class EagleDecoder:
    """Greedy speculative decoding of a LlavaForConditionalGeneration with an ``EagleHead``."""

    def __init__(self, model: Any, head: EagleHead, tree: TreeConfig, eos_token_id: int, pad_token_id: int) -> None:
        self.model, self.head, self.tree = model, head, tree
        self.lm = model.model.language_model
        self.eos, self.pad = eos_token_id, pad_token_id
        self.stats = EagleStats()
        self.caches: tuple[SlotCache, SlotCache] | None = None  # the last call's, for inspection
        # plain tensors, read once: module lookups cost more than a tiny model's matmuls (the weights never move)
        self._embed_w, self._lm_w = self.lm.embed_tokens.weight, model.lm_head.weight
        self._lm_head = module_projection(model.lm_head)  # the same kernel as the cpu backend's loop: same logits
        self._target_w = [layer_weights(layer) for layer in self.lm.layers[: self.lm.config.num_hidden_layers]]
        self._head_w = layer_weights(head.layer)

    # -- the loop --------------------------------------------------------------------------------------------------
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                 streamer: Any = None, tree: TreeConfig | None = None, threads: int | None = None) -> torch.Tensor:
        """New token ids (batch, steps), padded after EOS: the target's greedy tokens, as ``generate`` makes them.
        ``tree``: this call's draft tree (default ``self.tree``); ``threads``: torch threads for the draft-verify
        cycles (default: unchanged; the prefill always runs with the current count)."""
        if streamer is not None:
            streamer.put(inputs["input_ids"].cpu())
        g = self._prefill(inputs, max_new_tokens, min_new_tokens or 0, streamer, tree or self.tree)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads or before)
            while not all(g.done):
                self._step(g)
        finally:
            torch.set_num_threads(before)
        if streamer is not None:
            streamer.end()
        self.stats.new_tokens += sum(len(r) for r in g.rows)
        width = max(len(r) for r in g.rows)
        return torch.tensor([r + [self.pad] * (width - len(r)) for r in g.rows], dtype=torch.long,
                            device=inputs["input_ids"].device)

    def _prefill(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new: int, streamer: Any,
                 tree: TreeConfig) -> _Generation:
        """The normal LLaVA forward (first token, prompt KV cache), then the prompt through the head."""
        stats = self.stats
        mask = inputs["attention_mask"]
        batch, length = mask.shape
        device = mask.device
        t0 = self._clock()
        embeds, hidden, prompt_cache = run_target(self.model, inputs)
        logits = self._lm_head(hidden[:, -1]).float()
        first = self._no_eos(logits, torch.tensor(min_new > 0, device=device)).argmax(-1)
        capacity = length + max_new_tokens + self.room(tree)
        caches = self._caches(batch, capacity, hidden.dtype, device)
        self._rope = RopeTable(self.lm.rotary_emb, hidden, capacity)  # positions never exceed slots
        start = (mask == 0).sum(1)
        caches[0].load_prefill(prompt_cache, start)
        caches[1].start.copy_(start)
        self.caches = caches
        stats.prefill_forwards += 1
        stats.sequences += batch

        rows = [[t] for t in first.tolist()]
        g = _Generation(*caches, rows=rows, done=[r[0] == self.eos or max_new_tokens <= 1 for r in rows],
                        root=first, root_positions=mask.sum(1), predicted=hidden[:, -1],
                        generated=torch.ones(batch, dtype=torch.long, device=device), max_new_tokens=max_new_tokens,
                        min_new_tokens=min_new, streamer=streamer, tree=tree)
        if not all(g.done):  # the head reads the prompt before the first token is out, as EAGLE's reference does
            g.predicted = self._feed_head(torch.cat([embeds[:, 1:], F.embedding(first, self._embed_w)[:, None]], 1),
                                          hidden, prompt_positions(mask), torch.full_like(start, length), g.head_cache)
        stats.prefill_s += self._clock() - t0
        self._stream(g)
        return g

    def _step(self, g: _Generation) -> None:
        """Draft a tree, verify it, keep the accepted path, and feed it to the head."""
        stats, depth = self.stats, g.tree.depth
        t0 = self._clock()
        forbid = [g.generated + d < g.min_new_tokens if g.min_new_tokens else None for d in range(depth)]
        tree, depth = self._draft(g, forbid)
        t1 = self._clock()
        hidden, emitted, path, counts = self._verify(g, tree, depth)
        t2 = self._clock()
        stats.draft_s += t1 - t0
        stats.verify_s += t2 - t1

        width = int(counts.max())
        for b, (tokens, c) in enumerate(zip(emitted[:, :width].tolist(), counts.tolist())):
            if g.done[b]:
                continue
            stats.active_row_steps += 1
            for t in tokens[:c]:
                g.rows[b].append(t)
                stats.accepted_tokens += 1
                if t == self.eos or len(g.rows[b]) >= g.max_new_tokens:
                    g.done[b] = True
                    break
        self._stream(g)
        if all(g.done):
            return
        t3 = self._clock()
        features = hidden.gather(1, path[:, :width, None].expand(-1, -1, hidden.shape[-1]))
        positions = g.root_positions[:, None] + torch.arange(width, device=counts.device)
        g.predicted = self._feed_head(F.embedding(emitted[:, :width], self._embed_w), features, positions, counts,
                                      g.head_cache)
        g.root = emitted.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
        g.root_positions = g.root_positions + counts
        g.generated = g.generated + counts
        stats.draft_s += self._clock() - t3

    # -- pieces ----------------------------------------------------------------------------------------------------
    def _verify(self, g: _Generation, tree: Tree, depth: int) -> tuple[torch.Tensor, ...]:
        """One target forward over the tree, greedy acceptance and KV compaction: (final-norm hidden states of the
        nodes, the target's tokens along each row's path, the path, accepted counts)."""
        n = tree.tokens.shape[1]
        allowed = torch.cat([g.target_cache.prefix_mask()[:, None].expand(-1, n, -1), tree.mask], -1)
        hidden = self._target(tree.tokens, tree.positions(g.root_positions), allowed, g.target_cache)
        logits = self._lm_head(hidden)
        if g.min_new_tokens:
            self._no_eos(logits, g.generated[:, None] + tree.depths < g.min_new_tokens)
        choice = logits.argmax(-1)
        path, counts = accept(tree, choice, depth)
        counts = counts.masked_fill(torch.tensor(g.done, device=counts.device), 0)  # finished rows keep nothing
        g.target_cache.compact(path, counts, in_order=tree.chain)
        self.stats.verify_forwards += 1
        return hidden, choice.gather(1, path), path, counts

    def synthetic_generation(self, batch: int, prefix: int, tree: TreeConfig) -> _Generation:
        """A state as after a prefill of ``prefix`` tokens, with random cache contents, root and feature: what the
        tree sizing (``sizing.measure_costs``) times drafts and verifications on; their cost does not depend on
        the values."""
        weight, text = self._lm_w, self.lm.config
        gen = torch.Generator(device=weight.device).manual_seed(0)
        capacity = prefix + 2 * self.room(tree)
        caches = self._caches(batch, capacity, weight.dtype, weight.device)
        self._rope = RopeTable(self.lm.rotary_emb, weight, capacity)
        for cache in caches:
            cache.kv.normal_(generator=gen)
            cache.lens.fill_(prefix)
            cache.begin = prefix
        long = {"dtype": torch.long, "device": weight.device}
        return _Generation(*caches, rows=[[] for _ in range(batch)], done=[False] * batch,
                           root=torch.randint(text.vocab_size, (batch,), generator=gen, **long),
                           root_positions=torch.full((batch,), prefix, **long),
                           predicted=torch.randn(batch, text.hidden_size, generator=gen, device=weight.device,
                                                 dtype=weight.dtype),
                           generated=torch.ones(batch, **long), max_new_tokens=capacity, min_new_tokens=0,
                           streamer=None, tree=tree)

    @staticmethod
    def room(tree: TreeConfig) -> int:
        """Cache slots a cycle needs past the valid entries: the draft writes up to top_k * (depth - 1) head
        entries, verification total_tokens + 1."""
        return max(tree.total_tokens, tree.top_k * max(tree.depth - 1, 1)) + tree.depth + 2

    def _clock(self) -> float:
        if self._lm_w.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _no_eos(self, logits: torch.Tensor, forbid: torch.Tensor | None) -> torch.Tensor:
        """Forbid EOS where ``forbid`` (broadcast over the vocabulary) is set: ``min_new_tokens`` as generate does."""
        if forbid is not None:
            logits[..., self.eos] = logits[..., self.eos].masked_fill(forbid, float("-inf"))
        return logits

    def _target(self, tokens: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                cache: SlotCache) -> torch.Tensor:
        """The language model's decoder layers on ``tokens`` -> final-norm hidden states."""
        hidden = F.embedding(tokens, self._embed_w)
        cos_sin, mask = self._rope(positions), allowed[:, None]
        for weights in self._target_w:
            hidden = decoder_layer(weights, hidden, cos_sin, mask, cache)
        return self.lm.norm(hidden)

    def _log_probs(self, features: torch.Tensor, forbid: torch.Tensor | None) -> torch.Tensor:
        logits = self._lm_head(features).float()
        if forbid is None:
            return torch.log_softmax(logits, dim=-1)
        return torch.log_softmax(self._no_eos(logits, forbid), dim=-1).clamp_(min=MIN_LOGPROB)

    def _feed_head(self, embeds: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                   counts: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """Append accepted entries (row b: the first ``counts[b]``) to the head's cache; return the head's
        prediction after each row's last one (batch, h)."""
        n, device = embeds.shape[1], embeds.device
        new = torch.ones(n, n, dtype=torch.bool, device=device).tril() & (
            cache.begin + torch.arange(n, device=device) >= cache.start[:, None])[:, None]  # not the prompt's padding
        new |= torch.eye(n, dtype=torch.bool, device=device)  # padding rows see themselves: no empty softmax
        allowed = torch.cat([cache.prefix_mask()[:, None].expand(-1, n, -1), new], -1)
        out = self.head.step(embeds, features, self._rope(positions), allowed[:, None], cache, self._head_w)
        cache.compact(torch.arange(n, device=device).expand(embeds.shape[0], n), counts, in_order=True)
        self.stats.head_forwards += 1
        last = (counts - 1).clamp(min=0)
        return out.gather(1, last[:, None, None].expand(-1, 1, out.shape[-1]))[:, 0]

    def _draft(self, g: _Generation, forbid_eos: list[torch.Tensor | None],
               stop_at_eos: bool = True) -> tuple[Tree, int]:
        """The draft of this step and its depth: a chain where ``top_k`` is 1, else a dynamic tree."""
        return (self._draft_chain if g.tree.top_k == 1 else self._draft_tree)(g, forbid_eos, stop_at_eos)

    def _all_at_eos(self, frontier: torch.Tensor, done: list[bool]) -> bool:
        """Whether every frontier node (batch, ...) of every row still generating is an EOS: drafting ends there."""
        rows = frontier.reshape(len(done), -1).tolist()
        return all(ended or all(t == self.eos for t in row) for row, ended in zip(rows, done))

    def _draft_chain(self, g: _Generation, forbid_eos: list[torch.Tensor | None],
                     stop_at_eos: bool) -> tuple[Tree, int]:
        """One token per head forward, the argmax: a chain needs no scores, reranking or tree mask, and on a CPU
        those bookkeeping operators cost a tenth of a head forward. Stops after an EOS (as ``_draft_tree``)."""
        depth = min(g.tree.depth, g.tree.total_tokens)
        cache, batch, device = g.head_cache, g.root.shape[0], g.root.device
        token = self._no_eos(self._lm_head(g.predicted).float(), forbid_eos[0]).argmax(-1)
        feature, drafted, base = g.predicted, [token], cache.begin
        # each drafted entry sees the prompt, the accepted tokens and the drafted entries up to itself
        allowed = torch.cat([cache.prefix_mask(), torch.ones(batch, depth, dtype=torch.bool, device=device)],
                            -1)[:, None, None]
        cos, sin = self._rope(g.root_positions[:, None] + torch.arange(depth, device=device))
        for d in range(1, depth):
            if stop_at_eos and self._all_at_eos(token, g.done):
                break
            cache.begin = base + d - 1
            feature = self.head.step(F.embedding(token[:, None], self._embed_w), feature[:, None],
                                     (cos[:, :, d - 1:d], sin[:, :, d - 1:d]), allowed[..., :base + d], cache,
                                     self._head_w)[:, 0]
            self.stats.head_forwards += 1
            token = self._no_eos(self._lm_head(feature).float(), forbid_eos[d]).argmax(-1)
            drafted.append(token)
        cache.begin = base
        return chain_tree(g.root, torch.stack(drafted, 1)), len(drafted)

    def _draft_tree(self, g: _Generation, forbid_eos: list[torch.Tensor | None],
                    stop_at_eos: bool) -> tuple[Tree, int]:
        """EAGLE-2 dynamic tree: expand the top-k nodes (by cumulative log-probability) of each depth in one head
        forward, then keep the best ``total_tokens`` of every drafted candidate. Nothing after an EOS can be
        accepted, so an EOS node's children score as impossible, and drafting stops once every frontier node of
        every row still generating is an EOS (a short answer's last cycle drafts and verifies only up to its end).
        Returns the tree and its depth."""
        k, depth = g.tree.top_k, g.tree.depth
        cache, batch, device = g.head_cache, g.root.shape[0], g.root.device
        scores, tokens = self._log_probs(g.predicted, forbid_eos[0]).topk(k, dim=-1)
        zeros = torch.zeros(batch, k, dtype=torch.long, device=device)
        cand_tokens, cand_scores, cand_parents, cand_depths = [tokens], [scores], [zeros], [zeros + 1]
        frontier = torch.arange(1, k + 1, device=device).expand(batch, k)  # candidate index + 1
        features = g.predicted[:, None].expand(-1, k, -1)
        eye = torch.eye(k, dtype=torch.bool, device=device).expand(batch, k, k)
        seen = eye  # which drafted head entries each frontier node sees: its ancestors and itself
        base = cache.begin
        prefix = cache.prefix_mask()[:, None].expand(-1, k, -1)
        drafted = 1  # depth drafted so far
        for d in range(1, depth):
            if stop_at_eos and self._all_at_eos(tokens, g.done):
                break
            at_eos = tokens == self.eos
            cache.begin = base + (d - 1) * k
            out = self.head.step(F.embedding(tokens, self._embed_w), features,
                                 self._rope((g.root_positions + d - 1)[:, None].expand(-1, k)),
                                 torch.cat([prefix, seen], -1)[:, None], cache, self._head_w)
            self.stats.head_forwards += 1
            forbid = forbid_eos[d][:, None] if forbid_eos[d] is not None else None
            child_scores, child_tokens = self._log_probs(out, forbid).topk(k, dim=-1)
            child_scores = (scores[..., None] + child_scores.masked_fill(at_eos[..., None], MIN_LOGPROB)).flatten(1)
            child_tokens = child_tokens.flatten(1)
            cand_tokens.append(child_tokens)
            cand_scores.append(child_scores)
            cand_parents.append(frontier.repeat_interleave(k, dim=1))
            cand_depths.append(torch.full_like(child_tokens, d + 1))
            drafted = d + 1
            if d == depth - 1:
                break
            scores, best = child_scores.topk(k, dim=-1)
            parent = best // k
            tokens = child_tokens.gather(1, best)
            features = out.gather(1, parent[..., None].expand(-1, -1, out.shape[-1]))
            seen = torch.cat([seen.gather(1, parent[..., None].expand(-1, -1, seen.shape[-1])), eye], -1)
            frontier = k + (d - 1) * k * k + best + 1
        cache.begin = base
        cand_tokens = torch.cat(cand_tokens, 1)
        tree = select_tree(g.root, cand_tokens, torch.cat(cand_scores, 1), torch.cat(cand_parents, 1),
                           torch.cat(cand_depths, 1), min(g.tree.total_tokens, cand_tokens.shape[1]), drafted)
        return tree, drafted

    def _caches(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device) -> tuple[SlotCache, ...]:
        text = self.lm.config
        return (SlotCache.for_model(text, batch, capacity, dtype, device),
                SlotCache.for_model(text, batch, capacity, dtype, device, layers=1))

    def _stream(self, g: _Generation) -> None:
        """Hand the streamer every column that all rows have reached (finished rows are padded)."""
        if g.streamer is None:
            return
        ready = max(map(len, g.rows)) if all(g.done) else min(
            g.max_new_tokens if d else len(r) for r, d in zip(g.rows, g.done))
        for i in range(g.streamed, ready):
            g.streamer.put(torch.tensor([r[i] if i < len(r) else self.pad for r in g.rows]))
        g.streamed = max(ready, g.streamed)
