"""Request ids that say when they were minted, and the window a proxy or worker takes them in
(``cocoon.protocol.replay``)."""

from __future__ import annotations

import time

from cocoon.protocol.replay import (
    CLOCK_SKEW_S,
    REQUEST_MAX_AGE_S,
    START_GRACE_S,
    ReplayRecord,
    minted_at,
    new_request_id,
)

NOW = 1_800_000_000.0


def minted(at: float) -> str:
    return f"req-{int(at * 1000):x}-{'ab' * 16}"


def test_a_new_id_says_when_it_was_minted_and_is_never_the_same_twice() -> None:
    first, second = new_request_id(), new_request_id()
    assert first != second and len(first) <= 80  # JobRequest.request_id's bound
    stamp = minted_at(first)
    assert stamp is not None and abs(stamp - time.time()) < 5
    assert minted_at("req-" + "ab" * 16) is None and minted_at("req-1") is None  # other shapes: no time


def test_an_id_outside_its_window_is_refused_saying_why() -> None:
    record = ReplayRecord()
    assert record.expired(minted(NOW - REQUEST_MAX_AGE_S + 1), wall=NOW) is None
    assert record.expired(minted(NOW + CLOCK_SKEW_S - 1), wall=NOW) is None
    old = record.expired(minted(NOW - REQUEST_MAX_AGE_S - 1), wall=NOW)
    ahead = record.expired(minted(NOW + CLOCK_SKEW_S + 10), wall=NOW)
    assert old is not None and "ago" in old and "seal it anew" in old
    assert ahead is not None and "ahead of this proxy's clock" in ahead
    assert record.expired("req-1", wall=NOW) is None  # another shape: the memory record alone


def test_a_process_with_a_start_refuses_what_was_minted_before_it() -> None:
    restarted = ReplayRecord(started_at=NOW, who="proxy")
    before = restarted.expired(minted(NOW - START_GRACE_S - 0.5), wall=NOW + 1)
    assert before is not None and "before this proxy started" in before
    assert restarted.expired(minted(NOW - START_GRACE_S + 0.5), wall=NOW + 1) is None  # a clock a little behind
    assert ReplayRecord().expired(minted(NOW - 60), wall=NOW) is None  # without a start: the age alone


def test_minted_ids_are_held_for_their_window_and_others_for_the_ttl() -> None:
    record = ReplayRecord(ttl_s=10_000, max_age_s=100)
    stamped = minted(NOW)
    assert record.ttl_for(stamped) == 100 + CLOCK_SKEW_S and record.ttl_for("req-1") == 10_000
    assert record.first_time(stamped, now=0) and record.first_time("req-1", now=0)
    assert not record.first_time(stamped, now=100) and not record.first_time("req-1", now=100)
    assert record.first_time(stamped, now=100 + CLOCK_SKEW_S + 1)  # gone from memory: its age refuses it now
    assert not record.first_time("req-1", now=100 + CLOCK_SKEW_S + 1)
    assert len(record) == 2
