"""A worker that keeps failing is skipped for a while, probed once, and backed off exponentially."""

from __future__ import annotations

from cocoon.proxy.routing.breaker import Breakers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breakers = Breakers(threshold=2, clock=Clock())
    breakers.failure("w")
    breakers.success("w")
    breakers.failure("w")
    assert breakers.state("w") == "closed"
    breakers.failure("w")
    assert breakers.state("w") == "open"
    assert not breakers.admits("w")


def test_after_its_backoff_an_open_breaker_lets_one_probe_through() -> None:
    clock = Clock()
    breakers = Breakers(threshold=1, base_s=1.0, clock=clock)
    breakers.failure("w")
    clock.now += 1.0
    assert breakers.state("w") == "half_open"
    assert breakers.admits("w")
    breakers.dispatched("w")
    assert not breakers.admits("w")  # one probe at a time
    breakers.success("w")
    assert breakers.state("w") == "closed"


def test_a_failed_probe_doubles_the_backoff_up_to_the_cap() -> None:
    clock = Clock()
    breakers = Breakers(threshold=1, base_s=1.0, max_s=4.0, clock=clock)
    backoffs = []
    for _ in range(5):
        breakers.failure("w")
        backoffs.append(breakers.view("w")["backoff_s"])
        clock.now += backoffs[-1]
    assert backoffs == [1.0, 2.0, 4.0, 4.0, 4.0]
