"""The proxy never sees a prompt or a completion: not in what it receives, sends, logs or stores."""

from __future__ import annotations

import uuid
from pathlib import Path

import openai

from cocoon.engines.config import DEFAULT_MODEL
from cocoon.local import LocalNetwork


def _everything_the_proxy_holds(network: LocalNetwork) -> bytes:
    assert network.capture_wire is not None
    parts = [network.capture_wire.read_bytes(), (network.home / "logs" / "proxy.log").read_bytes()]
    parts += [p.read_bytes() for p in Path(network.home / "proxy").rglob("*") if p.is_file()]
    return b"".join(parts)


def test_proxy_never_sees_the_prompt_or_the_completion(oai: openai.OpenAI, network: LocalNetwork) -> None:
    secret = f"my secret diary entry {uuid.uuid4().hex}"
    reply = oai.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": f"Repeat after me: {secret}"}],
        max_tokens=24,
        temperature=0,
    )
    completion = reply.choices[0].message.content or ""
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            # Greedy, and asked to repeat: a sampled answer to the bare secret was once six letters, too short
            # to look for in the capture.
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": f"Repeat after me: {secret}"}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        if c.choices
    )
    seen = _everything_the_proxy_holds(network)

    # The capture really holds the traffic of these requests: sealed jobs in, sealed frames out.
    assert b"/v1/jobs" in seen and b"/v1/worker/connect" in seen
    assert len(seen) > 4096
    # ...and not one readable piece of either side of the conversation.
    for needle in (secret, secret.split()[-1], "Repeat after me"):
        assert needle.encode() not in seen, f"proxy saw {needle!r}"
    for text in (completion, streamed):
        assert len(text.strip()) >= 12, "the model answered too little to check"
        assert text.strip().encode() not in seen
        for line in text.splitlines():
            if len(line.strip()) >= 16:
                assert line.strip().encode() not in seen
