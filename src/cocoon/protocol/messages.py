"""Every message on cocoon's wires, as versioned pydantic models.

worker <-> proxy: one WebSocket, msgpack frames multiplexed by ``job_id``. client <-> proxy: ``POST /v1/jobs``
with a msgpack ``JobRequest``, answered by a stream of length-prefixed msgpack ``StreamFrame``s. Each message
has a ``t`` tag and a ``v`` version; an unknown version is refused with a clear error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cocoon.protocol.money import PayerAuth

PROTOCOL_VERSION = 1
# Prompts are hashed for cache affinity in blocks of this many characters (about 64 tokens each).
PREFIX_BLOCK_CHARS = 256
PREFIX_BLOCK_TOKENS = 64
JobKind = Literal["chat", "completion", "embedding", "score"]
"""What a job asks: generate (chat, completion), embed, or score a given completion (teacher forcing; canaries)."""


class Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    v: int = PROTOCOL_VERSION


class ErrorBody(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: str
    type: str
    code: str
    param: str | None = None


# ---- worker -> proxy -------------------------------------------------------------------------------


# Bounds on what a worker may claim about itself: every number the router computes with is finite, non-negative
# and of a plausible size, so one hostile worker cannot break the directory (NaN) or win every ranking (negatives).
MAX_SLOTS = 1024
MAX_COUNT = 1_000_000  # queue depth, running jobs
MAX_TOKENS_PER_S = 1e7
MAX_TTFT_MS = 3_600_000.0
MAX_PRICE_COEFFICIENT = 1_000_000  # 1000× the registry price; a proxy's own cap is lower (money)
Rate = Annotated[float, Field(ge=0, le=MAX_TOKENS_PER_S, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class ModelOffer(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str = Field(min_length=1, max_length=200)
    model_hash: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    context_length: int = Field(ge=1, le=2**24)
    supports_embeddings: bool = False
    supports_vision: bool = False  # takes image content parts


class Challenge(Wire):
    """The proxy's first message on a worker socket: a fresh nonce the registration must sign."""

    t: Literal["challenge"] = "challenge"
    proxy_id: str
    nonce: bytes


class Register(Wire):
    t: Literal["register"] = "register"
    worker_id: str = Field(max_length=80)
    software: str = Field(max_length=200)
    models: list[ModelOffer] = Field(min_length=1, max_length=64)
    slots: int = Field(ge=1, le=MAX_SLOTS)
    price_coefficient: int = Field(1000, ge=1, le=MAX_PRICE_COEFFICIENT, description="1000 = 1x the registry price")
    region: str = Field("", max_length=64)
    payout_address: str = Field(
        "", max_length=128, description="wallet the proxy pays this worker's share to (TON address)"
    )
    ed25519_pub: bytes = Field(min_length=32, max_length=32)
    x25519_pub: bytes = Field(min_length=32, max_length=32)
    attestation: dict[str, Any]
    challenge_signature: bytes = Field(
        b"", max_length=64, description="Ed25519 signature of the proxy's challenge with the attested key"
    )


class Heartbeat(Wire):
    t: Literal["heartbeat"] = "heartbeat"
    free_slots: Count = Field(description="at most the registered slots")
    queue_depth: Count
    active_jobs: Count
    tokens_per_s: Rate
    prefill_tokens_per_s: Rate = 0.0
    ttft_ms: float = Field(
        0.0, ge=0, le=MAX_TTFT_MS, allow_inf_nan=False, description="the worker's promise: median TTFT lately"
    )


class Pong(Wire):
    t: Literal["pong"] = "pong"
    nonce: int = Field(ge=0, lt=2**63)


class Chunk(Wire):
    """A sealed piece of a response. ``worker_id`` is set on the client side of the proxy only."""

    t: Literal["chunk"] = "chunk"
    job_id: str = ""
    seq: int = Field(ge=0)
    data: bytes
    worker_id: str = ""
    key_nonce: bytes = Field(b"", description="chunk 0 only: the fresh nonce this job's response key mixes in")


class JobEnd(Wire):
    """The last frame of a job: the receipt as signed by the worker."""

    t: Literal["end"] = "end"
    job_id: str = ""
    receipt: Receipt
    signature: bytes


class JobError(Wire):
    t: Literal["error"] = "error"
    job_id: str = ""
    status: int
    error: ErrorBody
    retryable: bool = False


# ---- proxy -> worker -------------------------------------------------------------------------------


class Registered(Wire):
    t: Literal["registered"] = "registered"
    proxy_id: str
    heartbeat_interval: float


class Ping(Wire):
    t: Literal["ping"] = "ping"
    nonce: int = Field(ge=0, lt=2**63)


class Job(Wire):
    t: Literal["job"] = "job"
    job_id: str
    request_id: str
    model: str
    kind: JobKind
    max_tokens: int
    enc: bytes
    wrapped_key: bytes
    ciphertext: bytes
    resume_from: list[ResumeChunks] = Field(default_factory=list)


class ResumeChunks(BaseModel):
    """Sealed chunks an earlier worker emitted for this request, so a new one can continue after them."""

    model_config = ConfigDict(frozen=True)
    worker_id: str
    key_nonce: bytes = Field(b"", description="the nonce that worker's chunk 0 carried: it keys its chunks")
    chunks: list[bytes]


class Cancel(Wire):
    t: Literal["cancel"] = "cancel"
    job_id: str
    reason: str = ""


# ---- client <-> proxy -----------------------------------------------------------------------------


class WrappedKeyWire(BaseModel):
    model_config = ConfigDict(frozen=True)
    worker_id: str
    enc: bytes
    wrapped: bytes


class RoutingPrefs(BaseModel):
    """OpenRouter's ``provider`` vocabulary, where it fits."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    sort: Literal["latency", "throughput", "price"] | None = None
    max_price: int | None = Field(None, description="cap on the price coefficient, 1000 = 1x")
    allow_fallbacks: bool = True
    region: str | None = None
    hedge: bool = Field(False, description="run on two workers; the slower is cancelled at the first token")
    order: list[Annotated[str, Field(max_length=80)]] = Field(
        default_factory=list, max_length=64, description="worker ids to try first, in this order"
    )

    only: list[Annotated[str, Field(max_length=80)]] | None = Field(
        None, max_length=64, description="the only worker ids allowed (None: any)"
    )
    ignore: list[Annotated[str, Field(max_length=80)]] = Field(
        default_factory=list, max_length=64, description="worker ids never to use"
    )

    def allows(self, worker_id: str) -> bool:
        """Whether ``only`` and ``ignore`` let ``worker_id`` serve, and (without ``allow_fallbacks``) ``order``
        names it, as OpenRouter reads its ``provider`` object with provider names."""
        if self.only is not None and worker_id not in self.only:
            return False
        if not self.allow_fallbacks and self.order and worker_id not in self.order:
            return False
        return worker_id not in self.ignore

    def order_index(self, worker_id: str) -> int:
        """Where ``worker_id`` stands in ``order`` (the length of ``order`` when it is not in it)."""
        return self.order.index(worker_id) if worker_id in self.order else len(self.order)

    def admits(self, price_coefficient: int, region: str | None) -> bool:
        """Whether a worker with this price coefficient and region is within the request's cap and region.

        The one filter the client (choosing whom to seal to) and the proxy (ranking those) both apply.
        """
        within_price = self.max_price is None or price_coefficient <= self.max_price
        return within_price and (not self.region or region == self.region)


class JobRequest(Wire):
    t: Literal["job_request"] = "job_request"
    # Bounded: paid proxies key charges on it in a VARCHAR(80) column, which PostgreSQL enforces.
    request_id: str = Field(min_length=1, max_length=80)
    model: str
    kind: JobKind
    max_tokens: int = Field(ge=0)
    prompt_tokens: int = Field(0, ge=0, description="client's estimate, for routing only")
    keys: list[WrappedKeyWire] = Field(min_length=1)
    ciphertext: bytes
    routing: RoutingPrefs = Field(default_factory=RoutingPrefs)
    prefix_hashes: list[str] = Field(
        default_factory=list, max_length=256, description="salted chained hashes of prompt blocks (affinity)"
    )
    timeout: float = Field(120.0, gt=0, le=3600)
    payer: PayerAuth | None = Field(None, description="the client channel that pays; required by paid proxies")


class JobStart(Wire):
    t: Literal["start"] = "start"
    worker_id: str
    job_id: str
    attempt: int = 0
    hedged_out: bool = Field(False, description="a hedge loser: only its prefill-only receipt follows")


# ---- receipts --------------------------------------------------------------------------------------


# Bounds on a receipt, checked where it arrives (the worker socket, the client's stream) before anyone prices it:
# a negative or absurd count would otherwise move money, and an over-long id would fail the stores' VARCHAR(80).
MAX_RECEIPT_TOKENS = 100_000_000  # far past any context window
MAX_JOB_MS = 2 * 3_600_000.0  # a request lives at most an hour (JobRequest.timeout)
ReceiptId = Annotated[str, Field(max_length=80)]
TokenCount = Annotated[int, Field(ge=0, le=MAX_RECEIPT_TOKENS)]
Millis = Annotated[float, Field(ge=0, le=MAX_JOB_MS, allow_inf_nan=False)]


class Receipt(BaseModel):
    """What a worker attests it did for one job; signed with its attested Ed25519 key."""

    model_config = ConfigDict(frozen=True)
    v: int = PROTOCOL_VERSION
    receipt_id: ReceiptId
    request_id: ReceiptId
    job_id: ReceiptId
    worker_id: ReceiptId
    model: str = Field(max_length=200)
    model_hash: str = Field(max_length=128)
    prompt_tokens: TokenCount
    cached_tokens: TokenCount
    completion_tokens: TokenCount
    reasoning_tokens: TokenCount
    request_sha256: str = Field(max_length=128)
    response_sha256: str = Field(max_length=128)
    finish_reason: str = Field(max_length=32)
    started_at: float = Field(ge=0, allow_inf_nan=False)
    ttft_ms: Millis
    duration_ms: Millis


WorkerToProxy = Annotated[Register | Heartbeat | Pong | Chunk | JobEnd | JobError, Field(discriminator="t")]
ProxyToWorker = Annotated[Registered | Ping | Job | Cancel | JobError, Field(discriminator="t")]
StreamFrame = Annotated[JobStart | Chunk | JobEnd | JobError, Field(discriminator="t")]

JobEnd.model_rebuild()
Job.model_rebuild()
