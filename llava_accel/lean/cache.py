"""A KV cache in preallocated slots, where each row of a batch holds its own number of valid entries.

Speculative decoding writes a whole draft tree into the cache, keeps only the accepted path, and rows accept
different lengths. A ``DynamicCache`` can only be cropped at one common length, so we own the storage (gpt-fast
style): every forward writes its new entries at one common slot range (``begin`` .. ``begin + n``), and
``compact`` then moves each row's accepted entries right after that row's valid prefix. Row ``b``'s valid entries
are always the contiguous slots ``start[b] .. lens[b]`` (``start`` skips the left padding of the prompt).

The object is handed to transformers' attention layers as their cache: they only call
``update(key, value, layer_idx, ...)`` (the extra arguments differ between transformers 5.17 and 5.24).
"""

from __future__ import annotations

from typing import Any

import torch

from ..hugepages import advise
from ..quantize import release_heap


class SlotCache:
    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        # keys and values in one tensor, so that compaction moves both with one gather and one scatter; left
        # uninitialised: every slot a forward reads (those before its own new ones) was written before, and on a CPU
        # pages never written take no memory, so a prefill's entries move in (load_prefill) without the prompt's
        # entries being in memory twice; in 2 MiB pages on a CPU (``hugepages``: a decode step reads it all)
        self.kv = advise(torch.empty((2, layers, batch, kv_heads, capacity, head_dim), dtype=dtype, device=device))
        self._layers = list(zip(self.kv[0].unbind(0), self.kv[1].unbind(0)))
        self.start = torch.zeros(batch, dtype=torch.long, device=device)  # first valid slot of each row
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)  # one past the last valid slot
        self.begin = 0  # where the next forward writes its entries (the same slots for every row)

    @classmethod
    def for_model(cls, text_config: Any, batch: int, capacity: int, dtype: torch.dtype, device: torch.device,
                  layers: int | None = None) -> SlotCache:
        """A cache shaped for a Llama text config (``layers``: default, all of its decoder layers)."""
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        return cls(layers or text_config.num_hidden_layers, batch, text_config.num_key_value_heads, head_dim, capacity,
                   dtype, device)

    @property
    def keys(self) -> torch.Tensor:
        """(layers, batch, kv_heads, capacity, head_dim)"""
        return self.kv[0]

    @property
    def values(self) -> torch.Tensor:
        return self.kv[1]

    @property
    def capacity(self) -> int:
        return self.kv.shape[4]

    def load(self, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor], start: torch.Tensor) -> None:
        """Fill from a prefill's per-layer (batch, heads, length, dim) tensors; row b is valid from ``start[b]``."""
        for i, (k, v) in enumerate(zip(layer_keys, layer_values)):
            self._put(i, k, v)
        self._filled(layer_keys[0].shape[2], start)

    def load_prefill(self, prompt_cache: Any, start: torch.Tensor) -> None:
        """``load`` from the ``DynamicCache`` of a transformers forward, emptying it layer by layer: each layer's
        prompt entries are freed once copied (the 7B's, 780 tokens in fp32: 0.8 GB in all), not when the caller's
        reference goes (EAGLE's loop keeps it until the answer is done), and handed back to the system at once
        (``release_heap``): the 7B's int8-dynamic peak grew by them."""
        n = prompt_cache.layers[0].keys.shape[2]
        for i, layer in enumerate(prompt_cache.layers):
            self._put(i, layer.keys, layer.values)
            layer.keys = layer.values = None
            if self.kv.device.type == "cpu":
                release_heap()
        self._filled(n, start)

    def _put(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[2]
        self.keys[layer, :, :, :n] = keys
        self.values[layer, :, :, :n] = values

    def _filled(self, n: int, start: torch.Tensor) -> None:
        self.start.copy_(start)
        self.lens.fill_(n)
        self.begin = n

    def keep_all(self, n: int) -> None:
        """Keep the ``n`` entries the last forward wrote for every row (plain decoding: nothing to compact)."""
        self.lens += n
        self.begin += n

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new entries at slots ``begin ..`` and return every slot up to them (attention masks the rest)."""
        end = self.begin + key.shape[2]
        keys, values = self._layers[layer_idx]
        keys[:, :, self.begin:end] = key
        values[:, :, self.begin:end] = value
        return keys[:, :, :end], values[:, :, :end]

    def prefix_mask(self) -> torch.Tensor:
        """(batch, begin) bool: which slots before ``begin`` each row may attend to."""
        slots = torch.arange(self.begin, device=self.lens.device)
        return (slots >= self.start[:, None]) & (slots < self.lens[:, None])

    def compact(self, offsets: torch.Tensor, counts: torch.Tensor, in_order: bool = False) -> None:
        """Keep, for each row b, the new entries ``begin + offsets[b, :counts[b]]`` (in that order), moved to slots
        ``lens[b] ..``; the other new entries are dropped. ``offsets``: (batch, m) long, ``counts``: (batch,) >= 0.
        ``in_order``: the caller knows ``offsets[b, i] == i`` (a chain's path, a head feed); where every row's
        valid entries then end at ``begin`` (always at batch 1), the kept entries are already in place."""
        if in_order and bool((self.lens == self.begin).all()):
            self.lens += counts
            self.begin = int(self.lens.max())
            return
        m = offsets.shape[1]
        idx = torch.arange(m, device=offsets.device)
        keep = idx[None] < counts[:, None]
        last = (counts - 1).clamp(min=0)[:, None]
        # entries past a row's count repeat its last move (same source, same value, same target): a no-op; a row
        # that keeps nothing writes one stale entry just past its valid slots, where nobody looks
        src = self.begin + torch.where(keep, offsets, offsets.gather(1, last))
        dst = self.lens[:, None] + torch.where(keep, idx[None], last)
        _, layers, batch, heads, capacity, dim = self.kv.shape
        store = self.kv.view(2 * layers, batch, heads, capacity, dim)
        src = src[None, :, None, :, None].expand(2 * layers, batch, heads, m, dim)
        dst = dst[None, :, None, :, None].expand(2 * layers, batch, heads, m, dim)
        store.scatter_(3, dst, store.gather(3, src))
        self.lens += counts
        self.begin = int(self.lens.max())
