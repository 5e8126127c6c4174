"""EAGLE speculative decoding for LLaVA: draft head, draft tree, slot KV cache, decoding loop, head training."""
