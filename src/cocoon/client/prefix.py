"""Salted prefix hashes for cache affinity, computed by the client and sent in clear beside the seal; the cache
scope sealed inside it.

Each block's hash chains the prompt up to its end under a salt that never leaves this client: the proxy can
tell two of its requests share a prefix, never what it is, and cannot link equal prompts of two clients. The
same salt keys the scope a worker's prompt cache is partitioned by, so only this client's requests (and, behind
a sidecar with API keys, only one key's) share cached prompts.
"""

from __future__ import annotations

import hashlib
import hmac

from cocoon.protocol.messages import PREFIX_BLOCK_CHARS
from cocoon.protocol.payload import RequestPayload

MAX_BLOCKS = 64  # affinity beyond ~16k characters adds little; keeps the clear metadata small


def prompt_text(payload: RequestPayload) -> str:
    """The prompt as one canonical string: roles and contents of chat messages, or the completion prompt."""
    if payload.messages is not None:
        return "".join(f"\x1e{m.role}\x1f{m.content}" for m in payload.messages)
    return payload.prompt or ""


def prefix_hashes(salt: bytes, model: str, text: str) -> list[str]:
    """Chained, salted hashes of each whole ``PREFIX_BLOCK_CHARS`` block of ``text`` (16 hex digits each).

    A trailing partial block is not hashed: the next request of a conversation extends it.
    """
    out: list[str] = []
    chain = hmac.new(salt, model.encode(), hashlib.sha256).digest()
    for start in range(0, min(len(text), MAX_BLOCKS * PREFIX_BLOCK_CHARS), PREFIX_BLOCK_CHARS):
        block = text[start : start + PREFIX_BLOCK_CHARS]
        if len(block) < PREFIX_BLOCK_CHARS:
            break
        chain = hmac.new(salt, chain + block.encode(), hashlib.sha256).digest()
        out.append(chain[:8].hex())
    return out


def cache_scope(salt: bytes, partition: str = "") -> str:
    """The sealed ``RequestPayload.cache_scope`` of this client's requests in ``partition`` (an API key's id,
    or "" for all of them): 32 hex digits no one without ``salt`` can compute."""
    return hmac.new(salt, b"cocoon/cache-scope\x00" + partition.encode(), hashlib.sha256).hexdigest()[:32]
