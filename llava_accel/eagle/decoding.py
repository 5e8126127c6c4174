"""The EAGLE decoding loop: prefill, then draft a tree with the head, verify it in one target forward, accept.

We own the loop (gpt-fast style) and call the model's own modules: the prefill is the normal LLaVA forward (vision
tower, projector, language model), so the first token and the prompt's KV cache are exactly what ``generate``
computes; each verification runs the language model's decoder layers on the tree's tokens with a tree attention
mask and tree position ids, against a ``SlotCache``. Greedy acceptance makes the output the target's own greedy
tokens whatever the head drafts: a bad head only costs speed.

Per cycle and row: draft (1 + depth - 1 head forwards, all top-k nodes of a depth at once) -> verify (one target
forward over ``total_tokens + 1`` nodes) -> accept the longest path that equals the target's choices, plus one bonus
token -> compact the accepted KV entries -> feed the accepted tokens with their true target features to the head.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .cache import SlotCache
from .head import EagleHead
from .layer import decoder_layer, layer_weights
from .tree import Tree, accept, select_tree

MIN_LOGPROB = -1e4  # floor for draft log-probabilities, so that scores stay finite and ordered


@dataclass
class TreeConfig:
    """Shape of the draft. ``top_k=1`` with ``total_tokens=depth`` is a plain chain of ``depth`` tokens."""

    depth: int = 5  # longest drafted path (tokens)
    top_k: int = 4  # children per expanded node, and nodes expanded per depth
    total_tokens: int = 16  # drafted nodes verified per step (the root comes on top)

    def __post_init__(self) -> None:
        most = self.top_k + (self.depth - 1) * self.top_k ** 2
        if self.depth < 1 or self.top_k < 1 or not 1 <= self.total_tokens <= most:
            raise ValueError(f"draft tree depth={self.depth}, top_k={self.top_k}, total_tokens={self.total_tokens}: "
                             f"need depth >= 1, top_k >= 1 and 1 <= total_tokens <= {most}")

    @classmethod
    def chain(cls, depth: int = 5) -> TreeConfig:
        return cls(depth=depth, top_k=1, total_tokens=depth)


@dataclass
class EagleStats:
    """Counters over every ``generate`` call since the last reset.

    ``mean_acceptance_length`` = tokens emitted by verification steps / (verification steps x rows still
    generating): tokens per target forward per sequence, the bonus token included, the prefill's first token not.
    """

    sequences: int = 0
    new_tokens: int = 0  # generated tokens kept (up to and including EOS)
    prefill_forwards: int = 0  # one per generate call
    verify_forwards: int = 0  # target forwards after the prefill, one per draft-verify cycle (whole batch)
    head_forwards: int = 0
    active_row_steps: int = 0  # sum over verification steps of the rows still generating
    accepted_tokens: int = 0  # tokens emitted by verification steps (bonus included)
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


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them (real tokens count from 0, pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def run_target(model: Any, inputs: dict[str, torch.Tensor], use_cache: bool = True):
    """The LLaVA forward on a prepared batch: (input embeddings with image features in place, final-norm hidden
    states, KV cache). The embeddings are caught on their way into the language model, so nothing runs twice."""
    caught = {}

    def catch(module, args, kwargs):
        caught["embeds"] = kwargs["inputs_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        out = model.model(**inputs, position_ids=prompt_positions(inputs["attention_mask"]), use_cache=use_cache)
    finally:
        handle.remove()
    cache = getattr(out, "cache", None)  # transformers 5.24; 5.17 calls it past_key_values
    return caught["embeds"], out.last_hidden_state, cache if cache is not None else getattr(out, "past_key_values")


class EagleDecoder:
    """Greedy speculative decoding of a LlavaForConditionalGeneration with an ``EagleHead``."""

    def __init__(self, model: Any, head: EagleHead, tree: TreeConfig, eos_token_id: int, pad_token_id: int) -> None:
        self.model, self.head, self.tree = model, head, tree
        self.lm = model.model.language_model
        self.embed, self.lm_head = self.lm.embed_tokens, model.lm_head
        self.eos, self.pad = eos_token_id, pad_token_id
        self.stats = EagleStats()
        self.caches: tuple[SlotCache, SlotCache] | None = None

    # -- pieces ----------------------------------------------------------------------------------------------------
    def _clock(self) -> float:
        if self.lm_head.weight.is_cuda:
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
        hidden = self.embed(tokens)
        rope, mask = self.lm.rotary_emb(hidden, positions), allowed[:, None]
        for weights in self._target_weights:
            hidden = decoder_layer(weights, hidden, rope, mask, cache)
        return self.lm.norm(hidden)

    def _log_probs(self, features: torch.Tensor, forbid: torch.Tensor | None) -> torch.Tensor:
        logits = self._no_eos(self.lm_head(features).float(), forbid)
        return torch.log_softmax(logits, dim=-1).clamp_(min=MIN_LOGPROB)

    def _feed_head(self, embeds: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                   counts: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """Append accepted entries (row b: the first ``counts[b]``) to the head's cache; return the head's
        prediction after each row's last one (batch, h)."""
        n, device = embeds.shape[1], embeds.device
        new = torch.ones(n, n, dtype=torch.bool, device=device).tril() & (
            cache.begin + torch.arange(n, device=device) >= cache.start[:, None])[:, None]  # not the prompt's padding
        new |= torch.eye(n, dtype=torch.bool, device=device)  # padding rows see themselves: no empty softmax
        allowed = torch.cat([cache.prefix_mask()[:, None].expand(-1, n, -1), new], -1)
        out = self.head(embeds, features, positions, allowed, cache, self._head_weights)
        cache.compact(torch.arange(n, device=embeds.device).expand(embeds.shape[0], n), counts)
        self.stats.head_forwards += 1
        last = (counts - 1).clamp(min=0)
        return out.gather(1, last[:, None, None].expand(-1, 1, out.shape[-1]))[:, 0]

    def _draft(self, root: torch.Tensor, predicted: torch.Tensor, root_positions: torch.Tensor,
               cache: SlotCache, forbid_eos: list[torch.Tensor | None]) -> Tree:
        """EAGLE-2 dynamic tree: expand the top-k nodes (by cumulative log-probability) of each depth in one head
        forward, then keep the best ``total_tokens`` of every drafted candidate."""
        k, depth = self.tree.top_k, self.tree.depth
        batch, device = root.shape[0], root.device
        scores, tokens = self._log_probs(predicted, forbid_eos[0]).topk(k, dim=-1)
        zeros = torch.zeros(batch, k, dtype=torch.long, device=device)
        cand_tokens, cand_scores, cand_parents, cand_depths = [tokens], [scores], [zeros], [zeros + 1]
        frontier = torch.arange(1, k + 1, device=device).expand(batch, k)  # candidate index + 1
        features = predicted[:, None].expand(-1, k, -1)
        seen = torch.eye(k, dtype=torch.bool, device=device).expand(batch, k, k)  # frontier -> drafted entries
        base = cache.begin
        prefix = cache.prefix_mask()[:, None].expand(-1, k, -1)
        eye = torch.eye(k, dtype=torch.bool, device=device).expand(batch, k, k)
        for d in range(1, depth):
            cache.begin = base + (d - 1) * k
            out = self.head(self.embed(tokens), features, (root_positions + d - 1)[:, None].expand(-1, k),
                            torch.cat([prefix, seen], -1), cache, self._head_weights)
            self.stats.head_forwards += 1
            forbid = forbid_eos[d][:, None] if forbid_eos[d] is not None else None
            child_scores, child_tokens = self._log_probs(out, forbid).topk(k, dim=-1)
            child_scores = (scores[..., None] + child_scores).flatten(1)
            child_tokens = child_tokens.flatten(1)
            cand_tokens.append(child_tokens)
            cand_scores.append(child_scores)
            cand_parents.append(frontier.repeat_interleave(k, dim=1))
            cand_depths.append(torch.full_like(child_tokens, d + 1))
            if d == depth - 1:
                break
            scores, best = child_scores.topk(k, dim=-1)
            parent = best // k
            tokens = child_tokens.gather(1, best)
            features = out.gather(1, parent[..., None].expand(-1, -1, out.shape[-1]))
            seen = torch.cat([seen.gather(1, parent[..., None].expand(-1, -1, seen.shape[-1])), eye], -1)
            frontier = k + (d - 1) * k * k + best + 1
        cache.begin = base
        return select_tree(root, torch.cat(cand_tokens, 1), torch.cat(cand_scores, 1), torch.cat(cand_parents, 1),
                           torch.cat(cand_depths, 1), self.tree.total_tokens, depth)

    def _caches(self, batch: int, capacity: int, dtype: torch.dtype, device: torch.device) -> tuple[SlotCache, ...]:
        text = self.lm.config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return (SlotCache(text.num_hidden_layers, batch, text.num_key_value_heads, head_dim, capacity, dtype, device),
                SlotCache(1, batch, text.num_key_value_heads, head_dim, capacity, dtype, device))

    # -- the loop --------------------------------------------------------------------------------------------------
    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                 streamer: Any = None) -> torch.Tensor:
        """New token ids (batch, steps), padded after EOS: the target's greedy tokens, as ``generate`` makes them."""
        stats, tree = self.stats, self.tree
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch, length = input_ids.shape
        device = input_ids.device
        min_new = min_new_tokens or 0
        self._target_weights = [layer_weights(layer) for layer in self.lm.layers[: self.lm.config.num_hidden_layers]]
        self._head_weights = layer_weights(self.head.layer)
        if streamer is not None:
            streamer.put(input_ids.cpu())

        t0 = self._clock()
        embeds, hidden, prompt_cache = run_target(self.model, inputs)
        logits = self.lm_head(hidden[:, -1:])[:, 0].float()
        first = self._no_eos(logits, torch.tensor(min_new > 0, device=device)).argmax(-1)
        start = (mask == 0).sum(1)
        # the draft step writes up to top_k * (depth - 1) head entries past the prefix; verification total_tokens + 1
        room = max(tree.total_tokens, tree.top_k * max(tree.depth - 1, 1)) + tree.depth + 2
        target_cache, head_cache = self._caches(batch, length + max_new_tokens + room, hidden.dtype, device)
        target_cache.load([layer.keys for layer in prompt_cache.layers], [layer.values for layer in prompt_cache.layers],
                          start)
        self.caches = target_cache, head_cache  # the last call's, for inspection
        stats.prefill_forwards += 1
        stats.sequences += batch
        t1 = self._clock()
        stats.prefill_s += t1 - t0

        head_cache.start.copy_(start)
        positions = prompt_positions(mask)
        counts = torch.full((batch,), length, device=device)
        head_cache.lens.zero_()
        predicted = self._feed_head(torch.cat([embeds[:, 1:], self.embed(first)[:, None]], 1), hidden, positions,
                                    counts, head_cache)
        root, root_positions = first, positions[:, -1] + 1
        generated = torch.ones(batch, dtype=torch.long, device=device)  # tokens emitted so far, per row
        rows = [[t] for t in first.tolist()]
        done = [t == self.eos or max_new_tokens <= 1 for t in first.tolist()]
        streamed = self._stream(streamer, rows, done, 0, max_new_tokens)
        stats.draft_s += self._clock() - t1

        depth_range = torch.arange(tree.depth + 1, device=device)
        while not all(done):
            t0 = self._clock()
            forbid = [generated + d < min_new for d in range(tree.depth)] if min_new else [None] * tree.depth
            draft = self._draft(root, predicted, root_positions, head_cache, forbid)
            t1 = self._clock()
            n = draft.tokens.shape[1]
            allowed = torch.cat([target_cache.prefix_mask()[:, None].expand(-1, n, -1), draft.mask], -1)
            hidden = self._target(draft.tokens, draft.positions(root_positions), allowed, target_cache)
            logits = self.lm_head(hidden)
            if min_new:
                self._no_eos(logits, generated[:, None] + draft.depths < min_new)
            choice = logits.argmax(-1)
            path, counts = accept(draft, choice, tree.depth)
            finished = torch.tensor(done, device=device)
            counts = counts.masked_fill(finished, 0)  # finished rows keep nothing: their caches stop growing
            target_cache.compact(path, counts)
            emitted = choice.gather(1, path)
            stats.verify_forwards += 1
            t2 = self._clock()

            width = int(counts.max())
            for b, (tokens, c) in enumerate(zip(emitted[:, :width].tolist(), counts.tolist())):
                if done[b]:
                    continue
                stats.active_row_steps += 1
                stats.accepted_tokens += c
                for t in tokens[:c]:
                    rows[b].append(t)
                    if t == self.eos or len(rows[b]) >= max_new_tokens:
                        done[b] = True
                        break
            streamed = self._stream(streamer, rows, done, streamed, max_new_tokens)
            stats.draft_s += t1 - t0
            stats.verify_s += t2 - t1
            if all(done):
                break
            t3 = self._clock()
            features = hidden.gather(1, path[:, :width, None].expand(-1, -1, hidden.shape[-1]))
            step_positions = root_positions[:, None] + depth_range[:width]
            predicted = self._feed_head(self.embed(emitted[:, :width]), features, step_positions, counts, head_cache)
            root = emitted.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
            root_positions = root_positions + counts
            generated = generated + counts
            stats.draft_s += self._clock() - t3

        if streamer is not None:
            streamer.end()
        stats.new_tokens += sum(len(r) for r in rows)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)

    def _stream(self, streamer: Any, rows: list[list[int]], done: list[bool], streamed: int, limit: int) -> int:
        """Hand the streamer every column that all rows have reached (finished rows are padded); return the count."""
        if streamer is None:
            return streamed
        ready = min(limit if d else len(r) for r, d in zip(rows, done))
        if all(done):
            ready = max(len(r) for r in rows)
        for i in range(streamed, ready):
            streamer.put(torch.tensor([r[i] if i < len(r) else self.pad for r in rows]))
        return max(ready, streamed)
