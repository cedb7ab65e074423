"""Judging canaries: the threshold comes from other workers' recent gaps, a flag needs enough samples and two
distinct checkers, and a lying checker alone cannot get an honest worker flagged."""

from __future__ import annotations

import random

from cocoon.proxy.routing.canary import CORPUS, CanaryBook, CanaryPolicy, CanaryResult, draw_prompt

HONEST_GAP = 0.3
CHEAT_GAP = 3.0


def result(worker: str, checker: str, gap: float) -> CanaryResult:
    return CanaryResult(worker, checker, gap, greedy_rate=1.0 if gap < 1 else 0.4, tokens=40, at=0.0)


def book(**policy: float) -> CanaryBook:
    return CanaryBook(CanaryPolicy(**policy))  # type: ignore[arg-type]


def honest_rounds(b: CanaryBook, rounds: int) -> None:
    for i in range(rounds):
        b.record(result("a", "b", HONEST_GAP + 0.01 * (i % 3)))
        b.record(result("b", "a", HONEST_GAP + 0.02 * (i % 2)))


def test_a_worker_whose_answers_two_checkers_find_unlikely_is_flagged() -> None:
    b = book()
    honest_rounds(b, 2)
    flags = [b.record(result("c", checker, CHEAT_GAP)) for checker in ("a", "b", "a")]

    assert flags[:2] == [None, None]  # fewer than min_window canaries: not yet
    assert flags[2] is not None and "confirmed by 2 checkers" in flags[2].reason
    assert "c" in b.flags


def test_nobody_is_flagged_before_the_threshold_is_calibrated() -> None:
    b = book()
    flags = [b.record(result("c", checker, CHEAT_GAP)) for checker in ("a", "b") * 3]

    assert flags == [None] * 6 and b.threshold("c") is None


def test_one_lying_checker_cannot_get_an_honest_worker_flagged() -> None:
    b = book()
    honest_rounds(b, 3)
    for _ in range(8):  # the cheater "c" checks honest "a" and says its answers are unlikely
        assert b.record(result("a", "c", CHEAT_GAP)) is None
        b.record(result("a", "b", HONEST_GAP))

    assert "a" not in b.flags


def test_honest_noise_stays_under_the_calibrated_threshold() -> None:
    rng = random.Random(7)
    b = book()
    workers = ["a", "b", "c", "d"]
    for _ in range(200):
        worker, checker = rng.sample(workers, 2)
        assert b.record(result(worker, checker, max(0.0, rng.gauss(HONEST_GAP, 0.1)))) is None

    assert not b.flags


def test_the_threshold_never_falls_below_the_floor_and_ignores_the_judged_workers_own_canaries() -> None:
    b = book(floor=1.0)
    honest_rounds(b, 4)
    b.record(result("c", "a", CHEAT_GAP))

    assert b.threshold("c") == 1.0  # honest spread is tiny: the floor holds
    assert b.threshold("a") is None  # every canary so far was a's own (answered or checked): none calibrates it


def test_directory_view_says_when_no_peer_can_check() -> None:
    b = book()

    assert b.view("a", peers=0)["status"] == "no peer to check against"
    assert "cannot be attributed" in b.view("a", peers=1)["status"]
    assert b.view("a", peers=2)["status"] == "calibrating"


def test_periodic_canaries_are_due_once_per_interval_and_one_at_a_time() -> None:
    now = [100.0]
    b = CanaryBook(CanaryPolicy(min_interval_s=10), clock=lambda: now[0])

    assert b.due("a") and b.sending("a")
    assert not b.sending("a")  # one in flight
    b.done("a")
    assert not b.due("a")
    now[0] += 10
    assert b.due("a")


def test_canary_prompts_are_varied_chat_turns_with_realistic_lengths() -> None:
    rng = random.Random(1)
    prompts = [draw_prompt(rng) for _ in range(100)]

    assert len({p.messages[-1][1] for p in prompts}) > len(CORPUS) // 2
    assert all(p.messages[-1][0] == "user" and 24 <= p.max_tokens <= 96 for p in prompts)
    assert all(p.temperature == 0 for p in prompts)  # greedy: a checker can replay it
