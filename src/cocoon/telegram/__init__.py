"""Telegram Mini Apps on the server side: checking the ``initData`` a Mini App sends its backend."""

from cocoon.telegram.init_data import (
    CLOCK_SKEW,
    DEFAULT_MAX_AGE,
    TELEGRAM_PUBLIC_KEY_HEX,
    TELEGRAM_TEST_PUBLIC_KEY_HEX,
    sign_init_data,
    telegram_public_key,
    validate_init_data,
    validate_third_party_init_data,
)
from cocoon.telegram.webapp import InitData, WebAppChat, WebAppUser

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_MAX_AGE",
    "TELEGRAM_PUBLIC_KEY_HEX",
    "TELEGRAM_TEST_PUBLIC_KEY_HEX",
    "InitData",
    "WebAppChat",
    "WebAppUser",
    "sign_init_data",
    "telegram_public_key",
    "validate_init_data",
    "validate_third_party_init_data",
]
