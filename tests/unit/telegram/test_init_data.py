"""Telegram Mini App ``initData``: what a backend accepts, and every way a forged or stale one is refused.

The expected hashes and signatures are computed here a second time, by hand, from Telegram's documented recipe
(core.telegram.org/bots/webapps), so the checks are not tested against themselves. Telegram's documentation gives
no sample initData with its bot token, so there is no official vector here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.errors import InitDataInvalid, Unauthorized
from cocoon.telegram import (
    CLOCK_SKEW,
    DEFAULT_MAX_AGE,
    TELEGRAM_PUBLIC_KEY_HEX,
    TELEGRAM_TEST_PUBLIC_KEY_HEX,
    sign_init_data,
    telegram_public_key,
    validate_init_data,
    validate_third_party_init_data,
)

BOT_ID = 7000000001
BOT_TOKEN = f"{BOT_ID}:AAtest-token-for-unit-tests-only"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
AUTH_DATE = int((NOW - timedelta(minutes=5)).timestamp())
USER_JSON = (
    '{"id":279058397,"first_name":"Vlad + Co / \\u00e9","last_name":"K","username":"vdk",'
    '"language_code":"ru","is_premium":true,"allows_write_to_pm":true}'
)
FIELDS = {
    "query_id": "AAHdF6IQAAAAAN0XohDhrOrc",
    "user": USER_JSON,
    "auth_date": str(AUTH_DATE),
    "chat_instance": "8134722200314281151",
    "chat_type": "private",
    "start_param": "promo_42",
}


def documented_hash(fields: dict[str, str], token: str = BOT_TOKEN) -> str:
    """Telegram's recipe, written out plainly: sorted ``key=value`` lines but ``hash``, HMAC under HMAC(WebAppData)."""
    lines = [f"{key}={fields[key]}" for key in sorted(fields) if key != "hash"]
    secret_key = hmac.new(key=b"WebAppData", msg=token.encode(), digestmod=hashlib.sha256).digest()
    return hmac.new(key=secret_key, msg="\n".join(lines).encode(), digestmod=hashlib.sha256).hexdigest()


def query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in pairs)


def hashed(fields: dict[str, str], token: str = BOT_TOKEN) -> str:
    return query([*fields.items(), ("hash", documented_hash(fields, token))])


def rejected(
    check: str, init_data: str, token: str = BOT_TOKEN, max_age: timedelta = DEFAULT_MAX_AGE
) -> InitDataInvalid:
    with pytest.raises(InitDataInvalid) as caught:
        validate_init_data(init_data, token, now=NOW, max_age=max_age)
    assert caught.value.check == check
    assert f"check {check!r}" in str(caught.value)
    return caught.value


# ---- the bot's own backend: hash under the bot token ----------------------------------------------------------


def test_initdata_hashed_by_the_documented_recipe_verifies_and_reads_as_typed_fields() -> None:
    data = validate_init_data(hashed(FIELDS), BOT_TOKEN, now=NOW)
    assert data.user is not None
    assert (data.user.id, data.user.first_name, data.user.username) == (279058397, "Vlad + Co / é", "vdk")
    assert data.user.language_code == "ru" and data.user.is_premium and not data.user.is_bot
    assert data.auth_date == datetime.fromtimestamp(AUTH_DATE, UTC) and data.auth_date.tzinfo is UTC
    assert (data.query_id, data.chat_type, data.chat_instance) == (
        FIELDS["query_id"],
        "private",
        FIELDS["chat_instance"],
    )
    assert data.start_param == "promo_42" and data.receiver is None and data.chat is None
    assert data.fields["user"] == USER_JSON and data.fields["hash"] == documented_hash(FIELDS)


def test_sign_init_data_gives_the_documented_hash_and_a_query_string_that_verifies() -> None:
    signed = sign_init_data({**FIELDS, "user": json.loads(USER_JSON), "auth_date": AUTH_DATE}, BOT_TOKEN)
    data = validate_init_data(signed, BOT_TOKEN, now=NOW)
    assert data.fields["hash"] == documented_hash(dict(data.fields))
    assert data.user is not None and data.user.first_name == "Vlad + Co / é"
    assert "+" not in signed and " " not in signed  # spaces and pluses are percent-escaped, as Telegram does


def test_signature_field_stays_in_the_hash_check_as_the_docs_say_all_fields_but_hash() -> None:
    fields = {**FIELDS, "signature": "A" * 86}
    assert validate_init_data(hashed(fields), BOT_TOKEN, now=NOW).fields["signature"] == "A" * 86
    without_signature = documented_hash(FIELDS)
    rejected("hash_mismatch", query([*fields.items(), ("hash", without_signature)]))


def test_field_order_does_not_matter() -> None:
    pairs = [*FIELDS.items(), ("hash", documented_hash(FIELDS))]
    for seed in range(5):
        random.Random(seed).shuffle(pairs)
        assert validate_init_data(query(pairs), BOT_TOKEN, now=NOW).fields == dict(pairs)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_any_changed_field_breaks_the_hash(name: str) -> None:
    changed = {**FIELDS, name: FIELDS[name].replace("1", "2").replace("a", "b") + "x"}
    rejected("hash_mismatch", query([*changed.items(), ("hash", documented_hash(FIELDS))]))


def test_a_tampered_user_breaks_the_hash() -> None:
    forged = {**FIELDS, "user": USER_JSON.replace("279058397", "1")}
    rejected("hash_mismatch", query([*forged.items(), ("hash", documented_hash(FIELDS))]))


def test_a_dropped_or_an_added_field_breaks_the_hash() -> None:
    genuine = documented_hash(FIELDS)
    dropped = {key: value for key, value in FIELDS.items() if key != "user"}
    rejected("hash_mismatch", query([*dropped.items(), ("hash", genuine)]))
    rejected("hash_mismatch", query([*FIELDS.items(), ("is_admin", "true"), ("hash", genuine)]))


def test_another_bots_token_does_not_verify() -> None:
    rejected("hash_mismatch", hashed(FIELDS, token="7000000002:AAanother-bots-token"))
    rejected("hash_mismatch", hashed(FIELDS), token=BOT_TOKEN + "x")


def test_initdata_without_a_hash_is_refused() -> None:
    assert rejected("missing_hash", query(list(FIELDS.items()))).param == "hash"


@pytest.mark.parametrize(
    "spoil",
    [str.upper, lambda h: h[:-1], lambda h: h + "0", lambda h: "", lambda h: "g" + h[1:], lambda h: h[:32]],
    ids=["upper case", "63 digits", "65 digits", "empty", "not hex", "half"],
)
def test_a_hash_not_spelled_as_telegram_spells_it_is_malformed(spoil: Callable[[str], str]) -> None:
    bad = spoil(documented_hash(FIELDS))
    rejected("malformed_hash", query([*FIELDS.items(), ("hash", bad)]))


def test_a_duplicated_field_is_refused_even_when_both_copies_agree() -> None:
    pairs = [*FIELDS.items(), ("hash", documented_hash(FIELDS))]
    assert rejected("duplicate_field", query([*pairs, ("user", USER_JSON)])).param == "user"
    rejected("duplicate_field", query([*pairs, ("hash", documented_hash(FIELDS))]))


def test_empty_initdata_is_refused() -> None:
    rejected("empty", "")


@pytest.mark.parametrize("init_data", ["auth_date", "a=1&&b=2", "user=%ff%fe&hash=00", "&"])
def test_a_string_that_is_not_a_query_string_is_malformed(init_data: str) -> None:
    rejected("malformed", init_data)


def test_a_line_feed_in_a_value_is_refused_because_it_would_let_fields_be_recut() -> None:
    """``start_param=x`` + ``user=U`` hash like one ``start_param="x\\nuser=U"``, which drops the user."""
    genuine = documented_hash(FIELDS)
    recut = {key: value for key, value in FIELDS.items() if key != "user"}
    recut["start_param"] = f"{FIELDS['start_param']}\nuser={FIELDS['user']}"
    assert documented_hash(recut) == genuine  # the naive check would accept it
    rejected("malformed", query([*recut.items(), ("hash", genuine)]))


# ---- auth_date ------------------------------------------------------------------------------------------------


def with_auth_date(when: datetime | str) -> str:
    value = when if isinstance(when, str) else str(int(when.timestamp()))
    return hashed({**FIELDS, "auth_date": value})


def test_stale_initdata_is_refused_and_the_limit_is_configurable() -> None:
    two_days_old = with_auth_date(NOW - timedelta(days=2))
    error = rejected("stale_auth_date", two_days_old)
    assert "2 days old" in str(error) and "1 day" in str(error)
    assert validate_init_data(two_days_old, BOT_TOKEN, now=NOW, max_age=timedelta(days=3)).auth_date < NOW
    rejected("stale_auth_date", hashed(FIELDS), max_age=timedelta(minutes=1))


def test_initdata_from_the_future_is_refused_beyond_a_small_clock_skew() -> None:
    rejected("future_auth_date", with_auth_date(NOW + timedelta(hours=1)))
    assert validate_init_data(with_auth_date(NOW + CLOCK_SKEW / 2), BOT_TOKEN, now=NOW).auth_date > NOW


def test_freshness_is_read_from_the_host_clock_by_default() -> None:
    recent = with_auth_date(datetime.now(UTC) - timedelta(seconds=5))
    assert validate_init_data(recent, BOT_TOKEN).user is not None
    with pytest.raises(InitDataInvalid, match="stale_auth_date"):
        validate_init_data(with_auth_date(NOW), BOT_TOKEN, max_age=timedelta(seconds=1))


@pytest.mark.parametrize("value", ["", "-5", "1.5", "soon", "1e9", "１２３"])
def test_an_auth_date_that_is_not_unix_seconds_is_malformed(value: str) -> None:
    rejected("malformed_auth_date", with_auth_date(value))


def test_initdata_without_auth_date_is_refused() -> None:
    rejected("missing_auth_date", hashed({key: value for key, value in FIELDS.items() if key != "auth_date"}))


# ---- the JSON fields ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    ["not json", "[1,2]", "null", '{"first_name":"A"}', '{"id":"1","first_name":"A"}', '{"id":true,"first_name":"A"}'],
    ids=["not JSON", "array", "null", "no id", "id as string", "id as bool"],
)
def test_a_signed_user_that_is_not_a_webappuser_is_refused(user: str) -> None:
    assert rejected("malformed_user", hashed({**FIELDS, "user": user})).param == "user"


def test_receiver_and_chat_are_typed_too() -> None:
    fields = {
        **FIELDS,
        "receiver": '{"id":5,"first_name":"Bot","is_bot":true}',
        "chat": '{"id":-100123,"type":"supergroup","title":"Room"}',
        "can_send_after": "10",
    }
    data = validate_init_data(hashed(fields), BOT_TOKEN, now=NOW)
    assert data.receiver is not None and data.receiver.is_bot
    assert data.chat is not None and (data.chat.id, data.chat.type, data.chat.title) == (-100123, "supergroup", "Room")
    assert data.can_send_after == 10
    rejected("malformed_chat", hashed({**FIELDS, "chat": '{"id":1}'}))


def test_an_invalid_initdata_is_a_401_with_its_own_code() -> None:
    error = rejected("hash_mismatch", hashed(FIELDS, token="1:other"))
    assert isinstance(error, Unauthorized) and error.status == 401
    assert error.to_openai()["error"]["code"] == "init_data_invalid"


# ---- third parties: Telegram's Ed25519 signature --------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()


def documented_signature(fields: dict[str, str], bot_id: int = BOT_ID, key: Ed25519PrivateKey = KEY) -> str:
    """Telegram's third-party recipe by hand: ``{bot_id}:WebAppData``, then sorted lines but hash and signature."""
    lines = [f"{name}={fields[name]}" for name in sorted(fields) if name not in ("hash", "signature")]
    message = f"{bot_id}:WebAppData\n" + "\n".join(lines)
    return base64.urlsafe_b64encode(key.sign(message.encode())).decode().rstrip("=")


def signed(fields: dict[str, str], bot_id: int = BOT_ID, key: Ed25519PrivateKey = KEY) -> str:
    return hashed({**fields, "signature": documented_signature(fields, bot_id, key)})


def third_party_rejected(check: str, init_data: str, bot_id: int = BOT_ID) -> InitDataInvalid:
    with pytest.raises(InitDataInvalid) as caught:
        validate_third_party_init_data(init_data, bot_id, public_key=KEY.public_key(), now=NOW)
    assert caught.value.check == check
    return caught.value


def test_a_signature_by_the_key_over_this_bot_verifies_without_the_token() -> None:
    data = validate_third_party_init_data(signed(FIELDS), BOT_ID, public_key=KEY.public_key(), now=NOW)
    assert data.user is not None and data.user.id == 279058397
    assert len(data.fields["signature"]) == 86


def test_the_hash_plays_no_part_in_the_third_party_check() -> None:
    fields = {**FIELDS, "signature": documented_signature(FIELDS)}
    no_hash = query(list(fields.items()))
    assert validate_third_party_init_data(no_hash, BOT_ID, public_key=KEY.public_key(), now=NOW).user is not None


def test_a_signature_by_another_key_is_refused() -> None:
    third_party_rejected("bad_signature", signed(FIELDS, key=Ed25519PrivateKey.generate()))


def test_a_signature_over_another_bot_id_is_refused() -> None:
    error = third_party_rejected("bad_signature", signed(FIELDS, bot_id=BOT_ID + 1))
    assert str(BOT_ID) in str(error)
    third_party_rejected("bad_signature", signed(FIELDS), bot_id=BOT_ID + 1)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_any_changed_field_breaks_the_signature(name: str) -> None:
    changed = {**FIELDS, name: FIELDS[name] + "x", "signature": documented_signature(FIELDS)}
    third_party_rejected("bad_signature", query(list(changed.items())))


def test_initdata_without_a_signature_is_refused_in_third_party_mode() -> None:
    assert third_party_rejected("missing_signature", hashed(FIELDS)).param == "signature"


@pytest.mark.parametrize(
    "garbage",
    ["", "!!!", "A" * 85, "A" * 87, "A" * 86 + "=", "+" * 86, "/" * 86, "A" * 85 + "B"],
    ids=["empty", "punctuation", "too short", "too long", "one pad", "plus", "slash", "non-canonical last char"],
)
def test_a_signature_that_is_not_base64url_of_64_bytes_is_malformed(garbage: str) -> None:
    third_party_rejected("malformed_signature", hashed({**FIELDS, "signature": garbage}))


def test_a_padded_signature_is_read_as_the_same_signature() -> None:
    fields = {**FIELDS, "signature": documented_signature(FIELDS) + "=="}
    assert validate_third_party_init_data(hashed(fields), BOT_ID, public_key=KEY.public_key(), now=NOW)


def test_third_party_mode_checks_auth_date_too() -> None:
    stale = {**FIELDS, "auth_date": str(int((NOW - timedelta(days=2)).timestamp()))}
    third_party_rejected("stale_auth_date", signed(stale))


def test_telegrams_published_keys_are_the_defaults_and_refuse_any_other_signer() -> None:
    assert telegram_public_key().public_bytes_raw().hex() == TELEGRAM_PUBLIC_KEY_HEX
    test_key = telegram_public_key(test_environment=True)
    assert test_key.public_bytes_raw().hex() == TELEGRAM_TEST_PUBLIC_KEY_HEX != TELEGRAM_PUBLIC_KEY_HEX
    for test_environment in (False, True):
        with pytest.raises(InitDataInvalid, match="bad_signature"):
            validate_third_party_init_data(signed(FIELDS), BOT_ID, test_environment=test_environment, now=NOW)


def test_a_bot_id_that_is_not_positive_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="bot_id"):
        validate_third_party_init_data(signed(FIELDS), 0, public_key=KEY.public_key(), now=NOW)


def test_sign_init_data_refuses_what_the_validator_would_refuse() -> None:
    with pytest.raises(ValueError, match="hash"):
        sign_init_data({**FIELDS, "hash": "00"}, BOT_TOKEN)
    with pytest.raises(ValueError, match="line feed"):
        sign_init_data({**FIELDS, "start_param": "a\nb"}, BOT_TOKEN)
