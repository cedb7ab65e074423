"""Prefix-cache affinity: which worker recently prefilled which prompt blocks, by salted hash.

Clients send chained hashes of their prompt's blocks (salted per client, so the proxy cannot link equal
prompts of two clients, nor read them). A worker that saw a request's leading blocks likely has them cached.
"""

from __future__ import annotations

from collections import OrderedDict

from cocoon.protocol.messages import PREFIX_BLOCK_TOKENS


class PrefixAffinity:
    """Per worker, an LRU of the block hashes routed to it; at most ``per_worker`` hashes each."""

    def __init__(self, per_worker: int = 4096) -> None:
        self.per_worker = per_worker
        self._seen: dict[str, OrderedDict[str, None]] = {}

    def cached_tokens(self, worker_id: str, hashes: list[str]) -> int:
        """Tokens of the longest leading run of ``hashes`` the worker has seen (an estimate)."""
        seen = self._seen.get(worker_id)
        if not seen or not hashes:
            return 0
        matched = 0
        for block in hashes:  # chained hashes: block i stands for the whole prefix up to i
            if block not in seen:
                break
            matched += 1
        return matched * PREFIX_BLOCK_TOKENS

    def remember(self, worker_id: str, hashes: list[str]) -> None:
        if not hashes:
            return
        seen = self._seen.setdefault(worker_id, OrderedDict())
        for block in hashes:
            seen[block] = None
            seen.move_to_end(block)
        while len(seen) > self.per_worker:
            seen.popitem(last=False)

    def forget(self, worker_id: str) -> None:
        self._seen.pop(worker_id, None)

    def size(self, worker_id: str) -> int:
        return len(self._seen.get(worker_id) or ())
