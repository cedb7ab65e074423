"""What each job attempt showed about its worker, fed to reputation, the circuit breaker and the averages.

The relay reports dispatch, first token and the end of every attempt here; nothing else writes evidence.
Faults of the client (4xx) and of load (a full queue) say nothing about a worker's honesty and are not counted.
"""

from __future__ import annotations

from cocoon.errors import CocoonError, NoCapacity, UpstreamTimeout, WorkerGone
from cocoon.protocol import Receipt
from cocoon.proxy.routing.directory import WorkerEntry
from cocoon.proxy.routing.rank import RoutingBook
from cocoon.proxy.routing.reputation import Outcome

LATE_SLACK_S = 0.5  # first tokens within 2 × promise + queue + this are on time


def outcome_of(exc: CocoonError) -> Outcome | None:
    """The evidence an error is; ``None`` when it is not the worker's fault."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, WorkerGone):
        return "dropped"
    if isinstance(exc, NoCapacity) or exc.status < 500:
        return None
    return "error"


class EvidenceLog:
    """The one writer of evidence: the relay reports each attempt here, and it updates the routing book."""

    def __init__(self, book: RoutingBook) -> None:
        self.book = book

    def dispatched(self, worker: WorkerEntry) -> None:
        self.book.breakers.dispatched(worker.worker_id)

    def first_token(self, worker: WorkerEntry, observed_s: float, queue_s: float) -> None:
        """Hold the first token to the worker's promise; feeds the router's TTFT average too."""
        alpha = 0.2
        worker.avg_ttft_s = (1 - alpha) * worker.avg_ttft_s + alpha * observed_s
        if worker.promised_ttft_s > 0:
            allowed = 2 * worker.promised_ttft_s + queue_s + worker.rtt_s + LATE_SLACK_S
            self.book.reputation.record_first_token(worker.worker_id, observed_s, allowed)

    def finished(
        self, worker: WorkerEntry, outcome: Outcome | None, seconds: float, receipt: Receipt | None = None
    ) -> None:
        """One attempt ended: ``outcome`` ``None`` means no evidence (cancelled by the client or a hedge)."""
        alpha = 0.2
        if outcome is None:
            return
        worker.avg_job_s = (1 - alpha) * worker.avg_job_s + alpha * seconds
        self.book.reputation.record(worker.worker_id, outcome)
        if outcome == "ok":
            worker.completed += 1
            self.book.breakers.success(worker.worker_id)
        else:
            worker.failed += 1
            self.book.breakers.failure(worker.worker_id)
        if receipt is not None and receipt.completion_tokens > 1:
            decode_s = (receipt.duration_ms - receipt.ttft_ms) / 1000
            if decode_s > 0:
                rate = (receipt.completion_tokens - 1) / decode_s
                worker.decode_tokens_per_s = (
                    rate if not worker.decode_tokens_per_s else (1 - alpha) * worker.decode_tokens_per_s + alpha * rate
                )
