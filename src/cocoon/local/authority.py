"""The devnet's simulated attestation authority, held only by the process that runs the network.

Workers never see the authority key: each asks this loopback endpoint for a fresh quote when it registers, and
it signs only for the node keys it enrolled when it started that worker. A process that merely runs as the same
user cannot have a quote made for keys of its own, and a quote it copies expires (the policy's
``max_quote_age_s``).
"""

from __future__ import annotations

import json
import logging
import threading
from base64 import b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cocoon.attestation import DEV_MEASUREMENT, make_simulated_quote, report_data
from cocoon.crypto import NodeKeys, SigningKey

log = logging.getLogger("cocoon.local")

MAX_BODY_BYTES = 64 * 1024


class DevAuthority:
    """Signs simulated quotes for enrolled workers over ``POST <url>`` (JSON keys and model hashes in, quote out)."""

    def __init__(self, key: SigningKey | None = None) -> None:
        self.key = key or SigningKey.generate()
        self._enrolled: dict[tuple[str, str], SigningKey] = {}
        self._server: ThreadingHTTPServer | None = None

    @property
    def public_hex(self) -> str:
        return self.key.public.hex()

    def enroll(self, keys: NodeKeys, signer: SigningKey | None = None) -> None:
        """Sign quotes for ``keys`` from now on (with ``signer`` instead of the authority: tests of refusal)."""
        self._enrolled[(keys.sealing.public.hex(), keys.signing.public.hex())] = signer or self.key

    def quote(self, x25519_hex: str, ed25519_hex: str, model_hashes: list[str]) -> bytes | None:
        """A fresh quote for an enrolled worker's keys and models; ``None`` for keys it did not enroll."""
        signer = self._enrolled.get((x25519_hex, ed25519_hex))
        if signer is None:
            return None
        data = report_data(bytes.fromhex(x25519_hex), bytes.fromhex(ed25519_hex), model_hashes)
        return make_simulated_quote(signer, data, DEV_MEASUREMENT)

    def start(self) -> str:
        """Serve on a free loopback port in a daemon thread; returns the URL workers post to."""
        authority = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, {"error": "request too large"})
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                    hashes = body["models"]
                    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
                        raise TypeError("models must be a list of hex strings")
                    quote = authority.quote(str(body["x25519_pub"]), str(body["ed25519_pub"]), hashes)
                except (ValueError, KeyError, TypeError) as exc:
                    self._answer(400, {"error": f"malformed quote request: {exc!r}"})
                    return
                if quote is None:
                    self._answer(403, {"error": "these keys are not a worker this network started"})
                    return
                self._answer(200, {"quote": b64encode(quote).decode()})

            def _answer(self, status: int, payload: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("dev authority %s", format % args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="dev-authority", daemon=True).start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1/quote"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
