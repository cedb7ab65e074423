"""The proxy role: directory of attested workers, routing, relaying sealed bytes."""

from cocoon.proxy.app import ProxyState, create_app, wrap_capture

__all__ = ["ProxyState", "create_app", "wrap_capture"]
