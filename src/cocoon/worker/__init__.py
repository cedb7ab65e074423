"""The worker role: engines behind attested keys, dialing out to proxies."""

from cocoon.worker.node import WorkerNode, attest
from cocoon.worker.runner import JobRunner

__all__ = ["JobRunner", "WorkerNode", "attest"]
