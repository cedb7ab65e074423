"""A wallet is the standard v4r2 wallet of its key on every workchain (the subwallet id other wallet apps
use), and asks to be funded at an address a person can safely pay: non-bounceable while undeployed, with
the testnet flag on testnet."""

from __future__ import annotations

import base64

import httpx
import pytest
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder

from cocoon.chain import MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID, InternalTransfer, ToncenterClient, Wallet
from cocoon.chain.address import address_text
from cocoon.chain.wallet import MESSAGE_TTL_S, wallet_address, wallet_state_init
from cocoon.errors import ChainError

SEED = bytes(range(32))
DESTINATION = Address("0:" + "cd" * 32)


def subwallet_in_data(wallet: Wallet) -> int:
    data = wallet.state_init.data
    assert data is not None
    body = data.begin_parse()
    body.skip_bits(32)  # seqno
    return int(body.load_uint(32))


@pytest.mark.parametrize(("workchain", "subwallet_id"), [(0, 698983191), (-1, 698983190)])
def test_a_wallet_uses_the_standard_subwallet_id_of_its_workchain(workchain: int, subwallet_id: int) -> None:
    wallet = Wallet(SEED, workchain=workchain)
    assert wallet.subwallet_id == subwallet_id
    assert subwallet_in_data(wallet) == subwallet_id
    expected = Address((workchain, wallet_state_init(wallet.public_key, subwallet_id).serialize().hash))
    assert wallet.address == expected
    assert wallet_address(wallet.public_key, workchain=workchain) == expected


def test_a_masterchain_wallet_signs_with_its_own_subwallet_id() -> None:
    wallet = Wallet(SEED, workchain=-1)
    message = wallet.external_message(3, [InternalTransfer(DESTINATION, 1)], valid_until=1_700_000_000)
    signed = message.refs[-1].begin_parse()
    signed.skip_bits(512)  # the signature
    assert signed.load_uint(32) == 698983190


@pytest.mark.parametrize("seqno", [0, 5])
def test_every_message_carries_its_expiry_the_first_one_too(seqno: int) -> None:
    """A first message signed valid forever could be replayed whenever the wallet is still undeployed."""
    wallet = Wallet(SEED)
    message = wallet.external_message(seqno, [InternalTransfer(DESTINATION, 1)], valid_until=1_700_000_123)
    signed = message.refs[-1].begin_parse()
    signed.skip_bits(512 + 32)  # the signature, the subwallet id
    assert (signed.load_uint(32), signed.load_uint(32)) == (1_700_000_123, seqno)


def test_an_explicit_subwallet_id_is_kept() -> None:
    wallet = Wallet(SEED, workchain=-1, subwallet_id=42)
    assert wallet.subwallet_id == subwallet_in_data(wallet) == 42


def chain_with(*, state: str, balance: int, global_id: int) -> ToncenterClient:
    param_19 = base64.b64encode(Builder().store_int(global_id, 32).end_cell().to_boc()).decode()  # type: ignore[no-untyped-call]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v2/getConfigParam":
            return httpx.Response(200, json={"ok": True, "result": {"config": {"bytes": param_19}}})
        assert request.url.path == "/api/v2/getAddressInformation"
        return httpx.Response(200, json={"ok": True, "result": {"balance": str(balance), "state": state}})

    return ToncenterClient(
        "https://testnet.toncenter.com/api/v2",
        api_key="test-key",
        rps=10_000,
        retry_backoff=0.001,
        transport=httpx.MockTransport(handle),
    )


async def test_an_empty_undeployed_wallet_asks_for_funds_at_its_non_bounceable_testnet_address() -> None:
    wallet = Wallet(SEED)
    async with chain_with(state="uninitialized", balance=0, global_id=TESTNET_GLOBAL_ID) as chain:
        with pytest.raises(ChainError, match="fund the wallet first") as caught:
            await wallet.send(chain, DESTINATION, 10**9)
    shown = address_text(wallet.address, bounceable=False, testnet=True)
    assert shown.startswith("0Q")  # non-bounceable, testnet only
    assert f"wallet {shown} holds 0 nanoton" in str(caught.value)


async def test_a_deployed_mainnet_wallet_asks_for_funds_at_its_bounceable_address() -> None:
    wallet = Wallet(SEED)
    async with chain_with(state="active", balance=5, global_id=MAINNET_GLOBAL_ID) as chain:
        with pytest.raises(ChainError, match="fund the wallet first") as caught:
            await wallet.send(chain, DESTINATION, 10**9)
    shown = address_text(wallet.address)
    assert shown.startswith("EQ")
    assert f"wallet {shown} holds 5 nanoton" in str(caught.value)


async def test_a_transfer_is_called_dropped_only_after_its_message_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving up while the message may still be applied invites a retry that sends the money twice."""
    wallet = Wallet(SEED)
    waited: list[float] = []

    async def wait_for_seqno(address: object, above: int, *, timeout: float) -> int:
        waited.append(timeout)
        return above + 1

    async with chain_with(state="uninitialized", balance=5 * 10**9, global_id=MAINNET_GLOBAL_ID) as chain:
        sent: list[object] = []

        async def send_boc(message: object) -> None:
            sent.append(message)

        monkeypatch.setattr(chain, "send_boc", send_boc)

        async def wait_for_transaction(address: object, **_: object) -> str:
            return "the wallet's transaction"

        monkeypatch.setattr(chain, "wait_for_seqno", wait_for_seqno)
        monkeypatch.setattr(chain, "wait_for_transaction", wait_for_transaction)
        result = await wallet.send(chain, DESTINATION, 10**9, timeout=5.0)
        assert (result.seqno, result.transaction) == (1, "the wallet's transaction")
    assert len(sent) == 1
    assert waited[0] >= MESSAGE_TTL_S  # not the 5 s asked for: the message lives MESSAGE_TTL_S
