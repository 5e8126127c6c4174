"""EAGLE speculative decoding for LLaVA: draft head, draft tree, decoding loop, head training (the decoder layers
and the KV cache it runs them with are ``llava_accel.lean``'s)."""
