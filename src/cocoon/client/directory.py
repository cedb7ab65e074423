"""The client's view of the network: the proxy's worker directory, each entry checked against the policy.

Workers whose attestation fails are dropped (and logged once); nothing is ever sealed to them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from cocoon.attestation import AttestationBundle, AttestationVerifier, VerifiedWorker
from cocoon.errors import AttestationFailed, CocoonError, map_http_errors

log = logging.getLogger("cocoon.client")


@dataclass(frozen=True, slots=True)
class AttestedWorker:
    worker_id: str
    verified: VerifiedWorker
    models: dict[str, str]  # model name -> weights hash (each one covered by the attestation)
    embeddings: frozenset[str]
    context_length: dict[str, int]
    price_coefficient: int
    region: str
    expected_latency_ms: float
    vision: frozenset[str] = frozenset()  # models this worker takes images for


class DirectoryCache:
    """Fetches ``GET /v1/directory`` at most every ``ttl`` seconds and verifies what it gets."""

    def __init__(self, http: httpx.AsyncClient, verifier: AttestationVerifier, ttl: float = 1.0) -> None:
        self.http = http
        self.verifier = verifier
        self.ttl = ttl
        self._fetched_at = -1e9
        self._workers: list[AttestedWorker] = []
        self._refused: set[str] = set()
        self._refreshing: asyncio.Task[None] | None = None

    async def workers(self, refresh: bool = False) -> list[AttestedWorker]:
        """The attested workers. A stale list is served while a refresh runs in the background (so the
        request path never waits on the directory), unless ``refresh`` forces a fetch now."""
        age = time.monotonic() - self._fetched_at
        if refresh or age > 30 * self.ttl:
            await self._refresh()
        elif age > self.ttl and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_quietly())
        return self._workers

    async def _refresh(self) -> None:
        self._workers = await self._fetch()
        self._fetched_at = time.monotonic()

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except CocoonError as exc:  # the next request fetches in the foreground and reports it
            log.warning("directory refresh failed: %s", exc.message)
            self._fetched_at = -1e9

    async def _fetch(self) -> list[AttestedWorker]:
        with map_http_errors(f"the proxy at {self.http.base_url}"):
            response = await self.http.get("/v1/directory")
        if response.status_code != 200:
            raise CocoonError.from_openai(response.status_code, _json(response))
        out = []
        for raw in response.json().get("workers", []):
            if raw.get("flagged"):  # caught by the proxy's canaries serving another model: never sealed to
                continue
            try:
                out.append(self._attest(raw))
            except AttestationFailed as exc:
                if raw.get("worker_id") not in self._refused:
                    self._refused.add(raw.get("worker_id"))
                    log.warning("worker refused worker=%s reason=%s", raw.get("worker_id"), exc.message)
        return out

    def _attest(self, raw: dict[str, Any]) -> AttestedWorker:
        try:
            fields = dict(raw["attestation"])
            for name in ("quote", "x25519_pub", "ed25519_pub"):
                fields[name] = base64.b64decode(fields[name])
            bundle = AttestationBundle.model_validate(fields)
            x_pub, ed_pub = base64.b64decode(raw["x25519_pub"]), base64.b64decode(raw["ed25519_pub"])
        except (KeyError, ValueError, TypeError) as exc:
            raise AttestationFailed(f"directory entry is malformed: {exc}") from exc
        verified = self.verifier.verify(bundle)
        if verified.x25519_pub != x_pub or verified.ed25519_pub != ed_pub:
            raise AttestationFailed("advertised keys differ from the attested ones")
        models = {m["model"]: m["model_hash"] for m in raw["models"]}
        if any(h not in verified.model_hashes for h in models.values()):
            raise AttestationFailed("a served model is not covered by the attestation")
        return AttestedWorker(
            worker_id=raw["worker_id"],
            verified=verified,
            models=models,
            embeddings=frozenset(m["model"] for m in raw["models"] if m.get("supports_embeddings")),
            vision=frozenset(m["model"] for m in raw["models"] if m.get("supports_vision")),
            context_length={m["model"]: int(m["context_length"]) for m in raw["models"]},
            price_coefficient=int(raw.get("price_coefficient", 1000)),
            region=str(raw.get("region", "")),
            expected_latency_ms=_rank_ms(raw.get("score", {})),
        )


def _rank_ms(score: dict[str, Any]) -> float:
    """The proxy's score: expected latency over reputation, with breaker penalties (older proxies: latency)."""
    ranked = score.get("score_ms", score.get("expected_latency_ms", 0.0))
    return math.inf if ranked is None else float(ranked)  # None: the proxy routes nothing there


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
