"""What each job attempt showed about its worker, fed to reputation, the circuit breaker and the averages.

The relay reports dispatch, first token and the end of every attempt here; nothing else writes evidence.
Faults of the client (4xx) and of load (a full queue) say nothing about a worker's honesty and are not counted.
Every time here is the proxy's own (its clock at dispatch, first frame and end): a worker's reports about its
speed (heartbeat promises, the timings in its receipts) never become evidence.
"""

from __future__ import annotations

from cocoon.errors import CocoonError, NoCapacity, UpstreamTimeout, WorkerGone
from cocoon.protocol import Receipt
from cocoon.proxy.routing.directory import WorkerEntry
from cocoon.proxy.routing.rank import RoutingBook
from cocoon.proxy.routing.reputation import Outcome

LATE_SLACK_S = 0.5  # first tokens within 2 × promise + queue + this are on time
MEASURED_BEFORE_TRUSTED = 3  # first tokens the proxy times before its average can stand in for a promise


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
        """Hold the first token (timed by the proxy) to what is expected of the worker; feed the TTFT averages.

        The expectation is the worker's promise, but never looser than what the proxy has measured of it: a
        worker cannot escape lateness by promising a lot or by promising nothing.
        """
        alpha = 0.2
        expected = [worker.promised_ttft_s] if worker.promised_ttft_s > 0 else []
        if worker.ttft_samples >= MEASURED_BEFORE_TRUSTED:
            expected.append(worker.measured_ttft_s)
        if expected:
            allowed = 2 * min(expected) + queue_s + worker.rtt_s + LATE_SLACK_S
            self.book.reputation.record_first_token(worker.worker_id, observed_s, allowed)
        worker.avg_ttft_s = (1 - alpha) * worker.avg_ttft_s + alpha * observed_s
        own_s = max(0.0, observed_s - worker.rtt_s - queue_s)
        worker.measured_ttft_s = (
            own_s if not worker.ttft_samples else (1 - alpha) * worker.measured_ttft_s + alpha * own_s
        )
        worker.ttft_samples += 1

    def finished(
        self,
        worker: WorkerEntry,
        outcome: Outcome | None,
        seconds: float,
        receipt: Receipt | None = None,
        first_token_s: float | None = None,
    ) -> None:
        """One attempt ended after ``seconds`` (its first frame after ``first_token_s``, both on the proxy's clock):
        ``outcome`` ``None`` means no evidence (cancelled by the client or a hedge). The decode rate is the
        receipt's completion tokens over the proxy's own first-frame-to-end time, never the receipt's timings."""
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
        if receipt is not None and receipt.completion_tokens > 1 and first_token_s is not None:
            decode_s = seconds - first_token_s
            if decode_s > 0:
                rate = (receipt.completion_tokens - 1) / decode_s
                worker.decode_tokens_per_s = (
                    rate if not worker.decode_tokens_per_s else (1 - alpha) * worker.decode_tokens_per_s + alpha * rate
                )
