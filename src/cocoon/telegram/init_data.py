"""Server-side checks of the ``initData`` that a Telegram Mini App hands its backend.

The page reads ``Telegram.WebApp.initData`` (a query string: the user, ``auth_date``, ...) and sends it along; before
trusting the user in it, a backend proves Telegram issued it. The bot's own backend checks ``hash``, an HMAC-SHA256
under a key derived from the bot token; a third party without the token checks ``signature``, Telegram's Ed25519
signature over the bot id and the fields. Both then check that ``auth_date`` is recent. The algorithms are
Telegram's: core.telegram.org/bots/webapps, "Validating data received via the Mini App" and "... for Third-Party Use".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from cocoon.errors import InitDataInvalid, first_problem
from cocoon.telegram.webapp import InitData, WebAppChat, WebAppUser

# Telegram's Ed25519 keys for ``signature``, as its documentation publishes them.
TELEGRAM_PUBLIC_KEY_HEX = "e7bf03a2fa4602af4580703d88dda5bb59f32ed8b02a56c187fe7d34caed242d"
TELEGRAM_TEST_PUBLIC_KEY_HEX = "40055058a4ee38156a06562e52eece92a771bcd8346a8c4615cb7376eddf72ec"

DEFAULT_MAX_AGE = timedelta(days=1)
# How far ahead of this host's clock an ``auth_date`` may be before it counts as forged rather than skewed.
CLOCK_SKEW = timedelta(minutes=1)
# Telegram's initData is well under 4 KiB; these bound what a hostile caller makes the parser do.
MAX_LENGTH = 65_536
MAX_FIELDS = 64

_HASH = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}(==)?")  # 64 bytes in base64url
_DIGITS = re.compile(r"[0-9]{1,11}")  # up to the year 5138: never overflows a datetime


def validate_init_data(
    init_data: str,
    bot_token: str,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> InitData:
    """Check ``init_data`` the way the bot's own backend does: its ``hash`` under ``bot_token``, then ``auth_date``.

    ``hash`` must be the hex HMAC-SHA256 of every other field (``signature`` included), sorted by key as
    ``key=value`` lines, under the key HMAC-SHA256("WebAppData", bot_token). ``auth_date`` must be at most
    ``max_age`` old at ``now`` (default: this host's clock) and not in the future. Raises ``InitDataInvalid``,
    whose ``check`` names the check that failed.
    """
    if not bot_token:
        raise ValueError("bot_token is empty; pass the token @BotFather gave the Mini App's bot")
    fields = _decode(init_data)
    received = fields.get("hash")
    if received is None:
        raise _invalid("missing_hash", "it has no hash field; send Telegram.WebApp.initData unchanged", "hash")
    if not _HASH.fullmatch(received):
        raise _invalid("malformed_hash", "its hash is not 64 lowercase hex digits, as Telegram writes it", "hash")
    if not hmac.compare_digest(_hmac_hash(fields, bot_token), received):
        raise _invalid(
            "hash_mismatch",
            "its hash does not match its fields under this bot's token: the data was altered, or Telegram issued it "
            "to another bot",
            "hash",
        )
    return _typed(fields, max_age, now)


def validate_third_party_init_data(
    init_data: str,
    bot_id: int,
    *,
    public_key: Ed25519PublicKey | None = None,
    test_environment: bool = False,
    max_age: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> InitData:
    """Check ``init_data`` without the bot token: its ``signature`` by Telegram for ``bot_id``, then ``auth_date``.

    ``signature`` must be the base64url Ed25519 signature of ``"{bot_id}:WebAppData\\n"`` followed by every field
    but ``hash`` and ``signature``, sorted by key as ``key=value`` lines. It is checked under ``public_key`` when
    given, else under Telegram's key for production or, with ``test_environment``, its test environment. Then
    ``auth_date`` as in ``validate_init_data``. Raises ``InitDataInvalid``, whose ``check`` names the failed check.
    """
    if isinstance(bot_id, bool) or bot_id <= 0:
        raise ValueError(f"bot_id must be a bot's positive id (the digits before ':' in its token), not {bot_id!r}")
    fields = _decode(init_data)
    signature = fields.get("signature")
    if signature is None:
        raise _invalid(
            "missing_signature", "it has no signature field; send Telegram.WebApp.initData unchanged", "signature"
        )
    key = public_key if public_key is not None else telegram_public_key(test_environment=test_environment)
    try:
        key.verify(_signature_bytes(signature), _third_party_check_string(fields, bot_id).encode())
    except InvalidSignature:
        environment = "given key" if public_key is not None else ("test" if test_environment else "production")
        raise _invalid(
            "bad_signature",
            f"its signature is not Telegram's ({environment}) for bot {bot_id}: the data was altered, or Telegram "
            "issued it to another bot or in the other environment",
            "signature",
        ) from None
    return _typed(fields, max_age, now)


def telegram_public_key(*, test_environment: bool = False) -> Ed25519PublicKey:
    """Telegram's Ed25519 key for ``signature``: production's, or its test environment's."""
    key_hex = TELEGRAM_TEST_PUBLIC_KEY_HEX if test_environment else TELEGRAM_PUBLIC_KEY_HEX
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))


def sign_init_data(fields: Mapping[str, str | int | Mapping[str, object]], bot_token: str) -> str:
    """An ``initData`` query string of ``fields`` with the ``hash`` Telegram would give it, for tests and dev.

    A mapping value (``user``) becomes compact JSON, an int its digits. ``fields`` must hold ``auth_date`` for
    ``validate_init_data`` to accept the result; it must not hold ``hash``. Raises ``ValueError`` otherwise.
    """
    text = {key: _as_text(key, value) for key, value in fields.items()}
    if "hash" in text:
        raise ValueError("fields already holds a hash; sign_init_data computes it")
    for key, value in text.items():
        if not _well_formed(key, value):
            raise ValueError(f"field {key!r} cannot be signed: keys need no '=' nor line feed, values no line feed")
    text["hash"] = _hmac_hash(text, bot_token)
    return urlencode(text, quote_via=quote)


def _decode(init_data: str) -> dict[str, str]:
    if not init_data:
        raise _invalid(
            "empty",
            "it is empty: the Mini App was opened from a keyboard button or inline mode, or the page sent nothing",
        )
    if len(init_data) > MAX_LENGTH:
        raise _invalid("malformed", f"it is {len(init_data)} characters long, more than {MAX_LENGTH}")
    try:
        pairs = parse_qsl(
            init_data, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except ValueError as exc:  # UnicodeDecodeError included: a percent-escape that is not UTF-8
        raise _invalid("malformed", f"it is not a URL-encoded query string ({str(exc)[:120]})") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        shown = repr(key[:40])  # a hostile key could be long; the message only needs to name it
        if key in fields:
            raise _invalid("duplicate_field", f"field {shown} appears more than once", key[:40])
        # A line feed inside a field would let one field pass for several in the data-check-string: signed
        # ``start_param=x`` and ``user=U`` re-sent as one ``start_param`` of ``x\nuser=U`` hash alike, user gone.
        if not _well_formed(key, value):
            raise _invalid(
                "malformed",
                f"field {shown} holds a line feed (or its key an '='), which Telegram never sends",
                key[:40],
            )
        fields[key] = value
    return fields


def _well_formed(key: str, value: str) -> bool:
    return bool(key) and "=" not in key and "\n" not in key and "\n" not in value


def _check_lines(fields: Mapping[str, str], leave_out: frozenset[str]) -> str:
    return "\n".join(f"{key}={fields[key]}" for key in sorted(fields) if key not in leave_out)


def _hmac_hash(fields: Mapping[str, str], bot_token: str) -> str:
    secret = hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()
    check_string = _check_lines(fields, frozenset({"hash"}))
    return hmac.new(secret, check_string.encode(), hashlib.sha256).hexdigest()


def _third_party_check_string(fields: Mapping[str, str], bot_id: int) -> str:
    return f"{bot_id}:WebAppData\n" + _check_lines(fields, frozenset({"hash", "signature"}))


def _signature_bytes(signature: str) -> bytes:
    problem = "its signature is not a base64url Ed25519 signature (86 characters of A-Z a-z 0-9 - _)"
    if not _SIGNATURE.fullmatch(signature):
        raise _invalid("malformed_signature", problem, "signature")
    unpadded = signature.removesuffix("==")
    try:
        raw = base64.urlsafe_b64decode(unpadded + "==")
    except binascii.Error:
        raise _invalid("malformed_signature", problem, "signature") from None
    # The last character carries 4 spare bits; only one spelling of each signature is accepted.
    if base64.urlsafe_b64encode(raw).decode().removesuffix("==") != unpadded:
        raise _invalid("malformed_signature", problem, "signature")
    return raw


def _typed(fields: dict[str, str], max_age: timedelta, now: datetime | None) -> InitData:
    return InitData(
        auth_date=_fresh_auth_date(fields, max_age, now),
        user=_json_field(WebAppUser, fields, "user", "malformed_user"),
        receiver=_json_field(WebAppUser, fields, "receiver", "malformed_user"),
        chat=_json_field(WebAppChat, fields, "chat", "malformed_chat"),
        query_id=fields.get("query_id"),
        chat_type=fields.get("chat_type"),
        chat_instance=fields.get("chat_instance"),
        start_param=fields.get("start_param"),
        can_send_after=_can_send_after(fields),
        fields=MappingProxyType(fields),
    )


def _fresh_auth_date(fields: Mapping[str, str], max_age: timedelta, now: datetime | None) -> datetime:
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    raw = fields.get("auth_date")
    if raw is None:
        raise _invalid("missing_auth_date", "it has no auth_date field", "auth_date")
    if not _DIGITS.fullmatch(raw):
        raise _invalid("malformed_auth_date", f"its auth_date {raw!r} is not a Unix time in seconds", "auth_date")
    auth_date = datetime.fromtimestamp(int(raw), UTC)
    age = moment - auth_date
    if age > max_age:
        raise _invalid(
            "stale_auth_date",
            f"its auth_date ({auth_date:%Y-%m-%d %H:%M:%S} UTC) is {_span(age)} old, more than the {_span(max_age)} "
            "this backend accepts; reopen the Mini App for fresh data",
            "auth_date",
        )
    if -age > CLOCK_SKEW:
        raise _invalid(
            "future_auth_date",
            f"its auth_date ({auth_date:%Y-%m-%d %H:%M:%S} UTC) is {_span(-age)} in the future; Telegram never "
            "issues such data (or this host's clock is wrong)",
            "auth_date",
        )
    return auth_date


_Model = TypeVar("_Model", WebAppUser, WebAppChat)


def _json_field(model: type[_Model], fields: Mapping[str, str], name: str, check: str) -> _Model | None:
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        where, what = first_problem(exc)
        place = f"{name}.{where}" if where else name
        raise _invalid(
            check, f"its {name} field is not a {model.__name__} JSON object ({place}: {what})", name
        ) from None


def _can_send_after(fields: Mapping[str, str]) -> int | None:
    raw = fields.get("can_send_after")
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        raise _invalid("malformed_field", f"its can_send_after {raw!r} is not a number of seconds", "can_send_after")
    return int(raw)


def _as_text(key: str, value: str | int | Mapping[str, object]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise ValueError(f"field {key!r} is a bool; initData has no bools outside its JSON fields")
    if isinstance(value, int):
        return str(value)
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 86_400:
        return "1 day"
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds} s"


def _invalid(check: str, problem: str, param: str | None = None) -> InitDataInvalid:
    return InitDataInvalid(f"Telegram initData failed check {check!r}: {problem}", check=check, param=param)
