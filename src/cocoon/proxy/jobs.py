"""The client API: ``POST /v1/jobs`` (msgpack ``JobRequest`` in, length-prefixed msgpack frames out), and the
directory clients seal to, ``GET /v1/directory`` and ``GET /v1/models``. Handlers read ``app.state.proxy``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cocoon.errors import CocoonError, NoCapacity, RequestExpired, RequestReplayed
from cocoon.metrics import FAILOVERS, record_request
from cocoon.protocol import JobRequest, unpack_as
from cocoon.protocol.http import ClientGone, read_body, unless_disconnected
from cocoon.proxy.attempt import Attempt, Frame
from cocoon.proxy.canaries import CanarySender
from cocoon.proxy.explorer.timeline import Timeline
from cocoon.proxy.relay import JobRelay
from cocoon.proxy.routing.rank import rank
from cocoon.proxy.routing.views import directory_json, models_json
from cocoon.proxy.state import ProxyState
from cocoon.proxy.stream_response import FrameStreamResponse

FRAMES = "application/x-cocoon-frames"


async def directory(request: Request) -> JSONResponse:
    state: ProxyState = request.app.state.proxy
    model = request.query_params.get("model")
    return JSONResponse(directory_json(state.directory, state.routing, state.proxy_id, model))


async def models(request: Request) -> JSONResponse:
    state: ProxyState = request.app.state.proxy
    data = models_json(state.directory)
    serving = {name: [w.register for w in workers] for name, workers in state.directory.models().items()}
    await state.cashier.annotate_models(data, serving)
    return JSONResponse({"object": "list", "data": data})


async def jobs(request: Request) -> Response:
    """Route one sealed request: rank the workers it was sealed to, admit it with the cashier, relay it.

    Errors before the first frame (400, 402, 409 for a replayed request id, 413, 503, a worker's own) are OpenAI
    JSON; after it they are frames.
    """
    received = time.monotonic()
    state: ProxyState = request.app.state.proxy
    timeline: Timeline = request.app.state.timeline
    settings = state.settings
    job = unpack_as(await read_body(request, settings.max_request_bytes, "sealed request"), JobRequest)
    if (stale := state.seen_requests.expired(job.request_id)) is not None:
        record_request("proxy", job.model, "expired")
        raise RequestExpired(stale)
    if not await state.seen_requests.first_time(job.request_id):
        record_request("proxy", job.model, "replayed")
        raise RequestReplayed(f"request {job.request_id} was sent before; a request is relayed once, seal it anew")
    candidates = rank(state.directory.sealed_to(job), job, state.routing)
    if not candidates:
        serving = len(state.directory.serving(job.model))
        record_request("proxy", job.model, "no_capacity")
        raise NoCapacity(
            f"none of the {len(job.keys)} workers this request was sealed to can take it "
            f"({serving} connected workers serve {job.model!r}); refresh the directory and retry"
        )
    reservation = await state.cashier.admit(job, [w.register for w in candidates])
    relay = JobRelay(
        job,
        candidates,
        state.cashier,
        reservation,
        first_byte_timeout=settings.first_byte_timeout,
        chunk_timeout=settings.chunk_timeout,
        dispatch_timeout=settings.dispatch_timeout,
        evidence=state.evidence,
    )
    try:
        # Waiting on in vain for a client gone would keep the job running to max_tokens; cancelling
        # first_frame makes the relay cancel it on its workers and book their receipts (JobRelay.abandon).
        attempt, first = await unless_disconnected(request, relay.first_frame())
    except ClientGone:
        record_request("proxy", job.model, "cancelled")
        return Response(status_code=499)
    except CocoonError as exc:
        record_request("proxy", job.model, exc.code)
        timeline.record(job.model, ok=False)  # a model some worker serves: names stay bounded
        raise
    state.routing.affinity.remember(attempt.worker.worker_id, job.prefix_hashes)
    sender: CanarySender = request.app.state.canaries
    sender.after_client_job(job.model)  # a share of traffic is followed by a canary, so canaries track load
    if len(relay.attempts) > 1:
        FAILOVERS.labels("proxy").inc(len(relay.attempts) - 1)
    ttft_s = attempt.first_at - received
    return FrameStreamResponse(_counted(relay, attempt, first, timeline, ttft_s), lambda: relay.finished, FRAMES)


async def _counted(
    relay: JobRelay, attempt: Attempt, first: Frame, timeline: Timeline, ttft_s: float
) -> AsyncIterator[bytes]:
    """The relay's stream, counted in ``cocoon_requests_total{role="proxy"}`` by how it ended, with the tokens
    its receipts claim and the time from its arrival to its first frame, and in the explorer's timeline
    (the same, and the nanoton charged against its reservation)."""
    outcome = "cancelled"
    try:
        async for chunk in relay.stream(attempt, first):
            yield chunk
        outcome = "ok" if relay.receipts else "error"
    finally:
        receipts = [end.receipt for end in relay.receipts]
        prompt_tokens = sum(r.prompt_tokens for r in receipts)
        completion_tokens = sum(r.completion_tokens for r in receipts)
        record_request(
            "proxy",
            relay.request.model,
            outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=ttft_s,
        )
        timeline.record(
            relay.request.model,
            ok=outcome == "ok",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            charged=relay.reservation.charged,
            ttft_s=ttft_s,
        )
