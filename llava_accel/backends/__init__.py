"""Built-in backends. Each module holds only what differs from ``eager``."""
