"""How a worker or client trusts a proxy's TLS certificate: the system's roots, plus a CA file of the operator's
(``tls_ca_file``, e.g. a private CA or a self-signed proxy certificate)."""

from __future__ import annotations

import ssl
from pathlib import Path

from cocoon.errors import ConfigError


def trust_context(ca_file: Path | None) -> ssl.SSLContext:
    """A TLS client context that verifies certificates and host names against the system's roots and
    ``ca_file``; ``ConfigError`` when the file is not PEM certificates."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls_ca_file {ca_file} is not a readable PEM file of CA certificates: {exc}") from exc
    return context
