"""The directory as clients read it: ``GET /v1/directory`` (workers, keys, attestation, why each ranks where it
does) and ``GET /v1/models`` (what the connected workers serve). Plain JSON-ready dicts; bytes are base64.
"""

from __future__ import annotations

import base64
from typing import Any

from cocoon.proxy.routing.directory import Directory, WorkerEntry
from cocoon.proxy.routing.rank import RoutingBook, score


def directory_json(directory: Directory, book: RoutingBook, proxy_id: str, model: str | None) -> dict[str, Any]:
    """Every connected worker (only those serving ``model`` when it is given), with its score and evidence."""
    workers = [
        worker_json(w, book, _peers(directory, w))
        for w in directory.workers.values()
        if model is None or w.serves(model)
    ]
    return {"object": "directory", "proxy_id": proxy_id, "workers": workers}


def models_json(directory: Directory) -> list[dict[str, Any]]:
    """One OpenAI model object per model some connected worker serves, sorted by name."""
    data = []
    for name, workers in sorted(directory.models().items()):
        offer = next(o for o in workers[0].register.models if o.model == name)
        data.append(
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "cocoon",
                "model_hash": offer.model_hash,
                "context_length": offer.context_length,
                "workers": len(workers),
                "supports_embeddings": any(
                    o.supports_embeddings for w in workers for o in w.register.models if o.model == name
                ),
            }
        )
    return data


def _peers(directory: Directory, worker: WorkerEntry) -> int:
    """Other connected workers attesting one of ``worker``'s weights hashes: who could check its canaries."""
    hashes = {o.model_hash for o in worker.register.models}
    return sum(
        1
        for w in directory.workers.values()
        if w.worker_id != worker.worker_id and hashes & {o.model_hash for o in w.register.models}
    )


def worker_json(w: WorkerEntry, book: RoutingBook, peers: int = 0) -> dict[str, Any]:
    reg = w.register
    attestation = {k: (_b64(v) if isinstance(v, bytes) else v) for k, v in reg.attestation.items()}
    parts = score(w, 0, [], book)
    return {
        "worker_id": w.worker_id,
        "software": reg.software,
        "models": [o.model_dump() for o in reg.models],
        "x25519_pub": _b64(reg.x25519_pub),
        "ed25519_pub": _b64(reg.ed25519_pub),
        "attestation": attestation,
        "price_coefficient": reg.price_coefficient,
        "region": reg.region,
        "slots": reg.slots,
        "free_slots": w.free_slots,
        "queue_depth": w.queue_depth,
        "inflight": w.inflight,
        "tokens_per_s": round(w.tokens_per_s, 2),
        "completed": w.completed,
        "failed": w.failed,
        "score": parts.as_json()
        | {
            "avg_job_ms": round(w.avg_job_s * 1000, 3),
            "avg_ttft_ms": round(w.avg_ttft_s * 1000, 3),
            "promised_ttft_ms": round(w.promised_ttft_s * 1000, 3),
            "measured_ttft_ms": round(w.measured_ttft_s * 1000, 3),  # the proxy's clock, less the round trip
            "prefill_tokens_per_s": round(w.prefill_tokens_per_s, 1),
            "decode_tokens_per_s": round(w.decode_tokens_per_s, 1),
            "cached_prefixes": book.affinity.size(w.worker_id),
        },
        "reputation": book.reputation.view(w.worker_id),
        "breaker": book.breakers.view(w.worker_id),
        "canary": book.canaries.view(w.worker_id, peers),
    } | _flagged(w.worker_id, book)


def _flagged(worker_id: str, book: RoutingBook) -> dict[str, Any]:
    flag = book.canaries.flags.get(worker_id)
    if flag is None:
        return {"flagged": False}
    return {
        "flagged": True,
        "flag": {"reason": flag.reason, "at": flag.at.isoformat(), "earnings_withheld_since": flag.since.isoformat()},
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
