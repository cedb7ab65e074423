"""Request ids, and the bounded record of those already seen: the proxy and each worker refuse a replayed one.

A relay that replays one sealed request would otherwise make the network run (and bill) it again. A memory
record alone does not stop it: it holds a bounded number of ids (a busy proxy went through its 100,000 in
minutes, after which a captured request ran again) and none across a restart. So a request id says when it
was minted (``new_request_id``: ``req-<unix ms, hex>-<128 random bits>``), and since the id is bound into
the seal's AAD and the payer's signature, nobody on the way can change it:

- an id minted more than ``max_age_s`` ago (the proxy: ``REQUEST_MAX_AGE_S``, a request is posted as soon as
  it is sealed; a worker: also the hour a request may run, as a stream resumed on it late in its life keeps its
  id), or more than ``CLOCK_SKEW_S`` ahead of this clock, is refused (``RequestExpired``): the record need only
  hold ids of that window, and does;
- with ``started_at`` (the proxy on SQLite, whose record is all it has), an id minted before the process
  started is refused too (but for ``START_GRACE_S``, for clients whose clock is a little behind): what it
  relayed before a restart cannot be replayed through it after;
- inside the window, an id seen before is refused (``RequestReplayed``).

An id of another shape (a client of its own) has only the memory record, for ``ttl_s``, as before.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict

REQUEST_MAX_AGE_S = 300.0  # the SDK seals a request just before posting it (a retry is sealed anew, under a new id)
CLOCK_SKEW_S = 60.0  # how far ahead of this clock a client's may be
# ...and how far behind, for ids minted just before a process started: what was minted in the last second before a
# restart can still be replayed to it (a client whose clock is behind by more is refused for that long after one)
START_GRACE_S = 1.0
RUNNING_MAX_S = 3600.0  # how long a request may run (JobRequest.timeout's bound)
_MINTED = re.compile(r"req-([0-9a-f]{1,12})-[0-9a-f]{32}")


def new_request_id() -> str:
    """A fresh request id that says when it was minted (unix milliseconds) and cannot be guessed."""
    return f"req-{time.time_ns() // 1_000_000:x}-{uuid.uuid4().hex}"


def minted_at(request_id: str) -> float | None:
    """When ``new_request_id`` minted ``request_id`` (unix seconds); None for an id of another shape."""
    match = _MINTED.fullmatch(request_id)
    return int(match[1], 16) / 1000 if match else None


class ReplayRecord:
    """``expired(id)`` says why an id is outside its window; ``first_time(id)`` records one inside it, False
    when it was recorded before.

    Ids from ``new_request_id`` are held for ``max_age_s + CLOCK_SKEW_S`` (past that their age refuses them),
    others for ``ttl_s``; at most ``capacity`` of each kind, oldest first out. ``started_at`` (unix time) also
    refuses ids minted before it; ``who`` names this side in the messages.
    """

    __slots__ = ("_minted", "_other", "capacity", "max_age_s", "started_at", "ttl_s", "who")

    def __init__(
        self,
        capacity: int = 1_000_000,
        ttl_s: float = 2 * 3600.0,
        *,
        max_age_s: float = REQUEST_MAX_AGE_S,
        started_at: float | None = None,
        who: str = "proxy",
    ) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self.started_at = started_at
        self.who = who
        self._minted: OrderedDict[str, float] = OrderedDict()  # id -> when it expires (monotonic), oldest first
        self._other: OrderedDict[str, float] = OrderedDict()

    def expired(self, request_id: str, wall: float | None = None) -> str | None:
        """Why an id from ``new_request_id`` is out of its window (None when it is in it, or of another shape)."""
        minted = minted_at(request_id)
        if minted is None:
            return None
        wall = time.time() if wall is None else wall
        if minted > wall + CLOCK_SKEW_S:
            return (
                f"request {request_id} was minted {minted - wall:.0f} s ahead of this {self.who}'s clock (at most "
                f"{CLOCK_SKEW_S:.0f} s are allowed): check the client's clock"
            )
        if minted < wall - self.max_age_s:
            return (
                f"request {request_id} was minted {wall - minted:.0f} s ago (this {self.who} takes requests at "
                f"most {self.max_age_s:.0f} s old): seal it anew, and check the client's clock if it was just sealed"
            )
        if self.started_at is not None and minted < self.started_at - START_GRACE_S:
            return (
                f"request {request_id} was minted before this {self.who} started: seal it anew (a client whose "
                f"clock is more than {START_GRACE_S:.0f} s behind sees this for that long after a restart)"
            )
        return None

    def first_time(self, request_id: str, now: float | None = None) -> bool:
        """Record ``request_id`` (``now``: monotonic); False when it was already recorded and has not expired.
        Says nothing of its window: ``expired`` does."""
        now = time.monotonic() if now is None else now
        timed = minted_at(request_id) is not None
        seen, ttl = (self._minted, self._window_s) if timed else (self._other, self.ttl_s)
        while seen:
            oldest, expires = next(iter(seen.items()))
            if expires > now and len(seen) < self.capacity:
                break
            del seen[oldest]
        if request_id in seen:
            return False
        seen[request_id] = now + ttl
        return True

    def ttl_for(self, request_id: str) -> float:
        """How long ``request_id`` must be remembered: its window, or ``ttl_s`` for an id of another shape."""
        return self._window_s if minted_at(request_id) is not None else self.ttl_s

    @property
    def _window_s(self) -> float:
        return self.max_age_s + CLOCK_SKEW_S

    def __len__(self) -> int:
        return len(self._minted) + len(self._other)
