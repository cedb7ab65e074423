"""The sidecar's API keys: each with a budget in nanoton, an rpm, the models it may use and an expiry."""

from cocoon.client.keys.gate import KeyGate, KeyMeter, check_exposure, loopback
from cocoon.client.keys.spending import KeySpending
from cocoon.client.keys.store import ApiKey, KeyStore, Usage, new_secret, secret_digest

__all__ = [
    "ApiKey",
    "KeyGate",
    "KeyMeter",
    "KeySpending",
    "KeyStore",
    "Usage",
    "check_exposure",
    "loopback",
    "new_secret",
    "secret_digest",
]
