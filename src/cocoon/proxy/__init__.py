"""The proxy role: a directory of attested workers, routing sealed jobs to them, and (when it bills) money.

``create_app`` builds the ASGI app; ``wrap_capture`` records its wire traffic for audits and tests.
"""

from cocoon.proxy.app import create_app
from cocoon.proxy.capture import wrap_capture
from cocoon.proxy.state import ProxyState

__all__ = ["ProxyState", "create_app", "wrap_capture"]
