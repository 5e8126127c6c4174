"""The language model's decoding as plain tensor ops over transformers' own weights (gpt-fast style): one function
per decoder layer, a preallocated KV cache, and the loops built on them (plain greedy here, EAGLE in ``eagle``)."""
