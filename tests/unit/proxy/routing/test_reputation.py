"""Reputation rests on evidence only, weighs forged receipts heaviest, and forgives with time."""

from __future__ import annotations

import pytest

from cocoon.proxy.routing.reputation import FLOOR, ReputationBook


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_without_evidence_has_full_reputation() -> None:
    assert ReputationBook().factor("w-new") == 1.0


def test_one_failure_does_not_ruin_a_new_worker_but_many_do() -> None:
    book = ReputationBook()
    book.record("w", "timeout")
    assert 0.6 < book.factor("w") < 0.7
    for _ in range(50):
        book.record("w", "dropped")
    assert book.factor("w") < 0.1


def test_successes_outweigh_an_occasional_failure() -> None:
    book = ReputationBook()
    for _ in range(40):
        book.record("w", "ok")
    book.record("w", "error")
    assert book.factor("w") > 0.95


def test_a_forged_receipt_costs_more_than_a_timeout() -> None:
    book = ReputationBook()
    book.record("forger", "bad_receipt")
    book.record("slow", "timeout")
    assert book.factor("forger") < book.factor("slow")


def test_first_tokens_later_than_promised_count_against_the_worker() -> None:
    book = ReputationBook()
    assert not book.record_first_token("w", observed_s=0.2, allowed_s=0.5)
    assert book.factor("w") == 1.0
    assert book.record_first_token("w", observed_s=3.0, allowed_s=0.5)
    assert book.factor("w") < 1.0


def test_evidence_decays_with_its_half_life() -> None:
    clock = Clock()
    book = ReputationBook(half_life_s=60, clock=clock)
    for _ in range(10):
        book.record("w", "timeout")
    before = book.factor("w")
    clock.now += 60
    assert book.view("w")["timeout"] == pytest.approx(5.0)
    clock.now += 600
    assert before < 0.2 < 0.95 < book.factor("w")


def test_reputation_never_reaches_zero() -> None:
    book = ReputationBook()
    for _ in range(1000):
        book.record("w", "bad_receipt")
    assert book.factor("w") == FLOOR


def test_changed_evidence_is_handed_to_the_store_once() -> None:
    book = ReputationBook()
    book.record("a", "ok")
    book.record("b", "timeout")
    assert [w for w, _ in book.drain_dirty()] == ["a", "b"]
    assert book.drain_dirty() == []
