"""cocoon: private LLM inference, sealed end to end, paid in TON for verified completions."""

__version__ = "0.1.0"
