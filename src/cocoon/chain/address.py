"""TON addresses in the two forms cocoon speaks: raw ``wc:hex`` (keys in books and stores) and the
user-friendly base64url text (what wallets, explorers and people see).

Every place that turns an address into a key or a text goes through here, so a channel is always the same
string whichever form a client, a worker or the chain used to name it.
"""

from __future__ import annotations

from pytoniq_core.boc.address import Address

from cocoon.errors import BadRequest


def parse_address(text: str | Address) -> Address:
    """``text`` (raw or user-friendly) as an ``Address``; ``BadRequest`` naming it when it is not one."""
    if isinstance(text, Address):
        return text
    try:
        return Address(text)
    except Exception as exc:  # pytoniq raises bare exceptions for malformed addresses
        raise BadRequest(f"{text!r} is not a TON address") from exc


def raw_address(address: str | Address) -> str:
    """The canonical raw form ``wc:hex`` of ``address``; ``BadRequest`` when a text is not an address."""
    parsed = parse_address(address)
    return f"{parsed.wc}:{parsed.hash_part.hex()}"


def address_text(address: str | Address, *, bounceable: bool = True, testnet: bool = False) -> str:
    """The user-friendly (base64url) form of ``address``, with the testnet-only flag when ``testnet``."""
    return str(parse_address(address).to_str(is_bounceable=bounceable, is_test_only=testnet))  # type: ignore[no-untyped-call]


def payable_text(address: str | Address, *, deployed: bool, testnet: bool) -> str:
    """The form of ``address`` to give a person who will send TON to it.

    Non-bounceable while no code is deployed there: a bounceable transfer to an uninitialized account
    bounces back, and only a non-bounceable one can create it (docs.ton.org, "Non-bounceable messages" and
    "Addresses workflow"). With the testnet flag on testnet, which mainnet wallet apps refuse to pay.
    """
    return address_text(address, bounceable=deployed, testnet=testnet)
