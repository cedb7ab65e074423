"""The registry contract: network parameters, served models, allowed TEE measurements and proxies.

Built from contracts/ABI.md §1. Reads are get-methods returning frozen dataclasses; writes are owner-only
messages sent from the owner's wallet, each checked against the registry's own transaction.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.hashmap.hashmap import HashMap
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.account import StateInit

from cocoon.chain.contracts import (
    TON,
    address_of,
    contract_code,
    new_query_id,
    read_address,
    read_string,
    send_checked,
    state_init_for,
    string_cell,
)
from cocoon.chain.toncenter import StackValue, ToncenterClient, Transaction
from cocoon.chain.wallet import Wallet
from cocoon.errors import BadRequest

log = logging.getLogger(__name__)

OP_SET_PARAMS = 0x52470001
OP_UPSERT_MODEL = 0x52470002
OP_REMOVE_MODEL = 0x52470003
OP_ADD_MEASUREMENT = 0x52470004
OP_REMOVE_MEASUREMENT = 0x52470005
OP_UPSERT_PROXY = 0x52470006
OP_REMOVE_PROXY = 0x52470007
OP_CHANGE_OWNER = 0x52470008

EXIT_CODES = {
    100: "the sender is not the registry owner",
    101: "invalid parameters (proxy fee above 10000 bps)",
    102: "invalid name or endpoint string",
    0xFFFF: "unknown op",
}
_POLICY_OPS = {
    OP_ADD_MEASUREMENT: "allow-measurement",
    OP_REMOVE_MEASUREMENT: "remove-measurement",
    OP_UPSERT_MODEL: "set-model",
    OP_REMOVE_MODEL: "remove-model",
}
OWNER_OP_VALUE = 5 * TON // 100
DEPLOY_VALUE = TON // 10


@dataclass(frozen=True, slots=True)
class RegistryParams:
    """Network parameters: proxy fee in basis points, minimum deposits (nanoton), close delay (s)."""

    proxy_fee_bps: int = 500
    min_client_deposit: int = TON
    min_worker_deposit: int = TON
    close_delay: int = 3600

    def store(self, builder: Builder) -> Builder:
        stored: Builder = (
            builder.store_uint(self.proxy_fee_bps, 16)
            .store_coins(self.min_client_deposit)
            .store_coins(self.min_worker_deposit)
            .store_uint(self.close_delay, 32)
        )
        return stored


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A served model: weights hash and prices in nanoton per million tokens of each class."""

    name: str
    weights_hash: bytes
    price_prompt: int
    price_cached: int
    price_completion: int

    @property
    def name_hash(self) -> bytes:
        return model_name_hash(self.name)


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    """A proxy the network lists: its id, wallet address, Ed25519 public key and public endpoint."""

    id: int
    address: Address
    public_key: bytes
    endpoint: str  # the proxy's public base URL, http(s)://host:port, as clients and workers reach it

    @property
    def http_url(self) -> str:
        """The base URL clients send jobs to (a ws(s):// endpoint is read as its http(s):// twin)."""
        url = self.endpoint.strip().rstrip("/")
        for ws, http in (("wss://", "https://"), ("ws://", "http://")):
            if url.startswith(ws):
                url = http + url[len(ws) :]
        return url.removesuffix(WORKER_SOCKET_PATH)

    @property
    def worker_url(self) -> str:
        """The WebSocket workers dial: the endpoint's ws(s):// form at ``/v1/worker/connect``."""
        url = self.http_url
        scheme = "wss://" if url.startswith("https://") else "ws://"
        return scheme + url.split("://", 1)[-1] + WORKER_SOCKET_PATH

    def endpoint_problem(self) -> str | None:
        """Why clients and workers cannot use this endpoint (``None``: they can). The listing is chain state: a
        typo'd or junk endpoint must be skipped by its readers, not crash them or hold one of their few slots."""
        return endpoint_problem(self.endpoint)


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not a proxy's base URL (``http(s)://host[:port][/path]``, or its ``ws(s)://`` twin),
    or ``None`` when it is."""
    if not endpoint or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in endpoint):
        return "it is empty or holds spaces or control characters"
    if not endpoint.isascii():
        return "it is not ASCII (an international host name is listed in its punycode form)"
    try:
        url = urllib.parse.urlsplit(endpoint)
        port = url.port  # ValueError when it is not a number in 0..65535
    except ValueError as exc:
        return f"it is not a URL ({exc})"
    if url.scheme not in ("http", "https", "ws", "wss"):
        return f"its scheme is {url.scheme or 'missing'}, not http(s) or ws(s)"
    if not url.hostname:
        return "it names no host"
    if port == 0:
        return "its port is 0"
    if url.username is not None or url.query or url.fragment:
        return "it carries credentials, a query or a fragment"
    return None


def usable_proxies(entries: list[ProxyEntry]) -> list[ProxyEntry]:
    """The entries whose endpoints clients and workers can use; each one skipped is logged once per read."""
    usable = []
    for entry in entries:
        problem = entry.endpoint_problem()
        if problem is None:
            usable.append(entry)
        else:
            log.warning("registry proxy skipped id=%064x endpoint=%r: %s", entry.id, entry.endpoint[:200], problem)
    return usable


WORKER_SOCKET_PATH = "/v1/worker/connect"
# A proxy endpoint's bytes that are not UTF-8 read as replacement characters, so that entry is skipped as
# unusable (``endpoint_problem``) instead of the whole listing failing to read.
ENDPOINT_DECODING = "replace"


def model_name_hash(name: str) -> bytes:
    """The registry's key for a model: sha256 of its UTF-8 name."""
    return hashlib.sha256(name.encode()).digest()


def measurement_key(measurement: bytes) -> bytes:
    """The registry's key for an allowed image measurement (e.g. a 48-byte TDX MRTD): its sha256."""
    return hashlib.sha256(measurement).digest()


def registry_init_data(owner: Address, params: RegistryParams) -> Cell:
    """The registry's initial storage: owner, params and three empty dictionaries."""
    data: Cell = params.store(Builder().store_address(owner)).store_bit(0).store_bit(0).store_bit(0).end_cell()
    return data


def _body(op: int, query_id: int | None) -> Builder:
    """op and query_id: a fresh query_id unless one is given."""
    body: Builder = Builder().store_uint(op, 32).store_uint(new_query_id() if query_id is None else query_id, 64)
    return body


def set_params_body(params: RegistryParams, query_id: int | None = None) -> Cell:
    body: Cell = params.store(_body(OP_SET_PARAMS, query_id)).end_cell()
    return body


def upsert_model_body(model: ModelEntry, query_id: int | None = None) -> Cell:
    body: Cell = (
        _body(OP_UPSERT_MODEL, query_id)
        .store_bytes(model.weights_hash)
        .store_coins(model.price_prompt)
        .store_coins(model.price_cached)
        .store_coins(model.price_completion)
        .store_ref(string_cell(model.name))
        .end_cell()
    )
    return body


def remove_model_body(name: str, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_REMOVE_MODEL, query_id).store_bytes(model_name_hash(name)).end_cell()
    return body


def add_measurement_body(key: bytes, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_ADD_MEASUREMENT, query_id).store_bytes(key).end_cell()
    return body


def remove_measurement_body(key: bytes, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_REMOVE_MEASUREMENT, query_id).store_bytes(key).end_cell()
    return body


def upsert_proxy_body(proxy: ProxyEntry, query_id: int | None = None) -> Cell:
    body: Cell = (
        _body(OP_UPSERT_PROXY, query_id)
        .store_uint(proxy.id, 256)
        .store_address(proxy.address)
        .store_bytes(proxy.public_key)
        .store_ref(string_cell(proxy.endpoint))
        .end_cell()
    )
    return body


def remove_proxy_body(proxy_id: int, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_REMOVE_PROXY, query_id).store_uint(proxy_id, 256).end_cell()
    return body


def change_owner_body(new_owner: Address, query_id: int | None = None) -> Cell:
    body: Cell = _body(OP_CHANGE_OWNER, query_id).store_address(new_owner).end_cell()
    return body


def _model_from_slice(body: Slice) -> ModelEntry:
    weights_hash = body.load_uint(256).to_bytes(32, "big")
    prompt, cached, completion = body.load_coins(), body.load_coins(), body.load_coins()
    name = read_string(body.load_ref())
    return ModelEntry(name, weights_hash, prompt, cached, completion)


def _proxy_from_slice(key: int, body: Slice) -> ProxyEntry:
    address = read_address(body)
    public_key = body.load_uint(256).to_bytes(32, "big")
    return ProxyEntry(key, address, public_key, read_string(body.load_ref(), ENDPOINT_DECODING))


def _dict_items(root: StackValue, parse: Callable[[int, Slice], object]) -> list[object]:
    if not isinstance(root, Cell):
        return []
    items = HashMap.parse(Slice.from_cell(root), 256) or {}
    return [parse(int(key), value) for key, value in sorted(items.items())]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One change to the network's allow-lists, as the registry's transaction for it records: ``op`` is
    ``allow-measurement``, ``remove-measurement``, ``set-model`` or ``remove-model``; ``subject`` the
    measurement key (sha256 of the measurement) or the model name (its name hash for a removal); ``detail`` the
    weights hash and prices of a model set."""

    utime: int
    lt: int
    tx_hash: bytes
    op: str
    subject: str
    detail: str = ""


def policy_change(tx: Transaction) -> PolicyChange | None:
    """The allow-list change ``tx`` applied, or None when it applied none (another op, or it failed)."""
    if not tx.succeeded or tx.in_msg is None or tx.in_msg.op not in _POLICY_OPS:
        return None
    body = Slice.from_cell(tx.in_msg.body)
    op = int(body.load_uint(32))
    body.skip_bits(64)  # query_id
    try:
        if op in (OP_ADD_MEASUREMENT, OP_REMOVE_MEASUREMENT, OP_REMOVE_MODEL):
            subject = bytes(body.load_bytes(32)).hex()
            return PolicyChange(tx.utime, tx.lt, tx.hash, _POLICY_OPS[op], subject)
        weights = bytes(body.load_bytes(32)).hex()
        prompt, cached, completion = body.load_coins(), body.load_coins(), body.load_coins()
        name = read_string(body.load_ref())
    except (ValueError, IndexError, UnicodeDecodeError):
        return None  # the contract took it, so this cannot happen; a reader never crashes on it all the same
    detail = f"weights {weights}, prices {prompt}/{cached}/{completion} nanoton per 1M tokens"
    return PolicyChange(tx.utime, tx.lt, tx.hash, _POLICY_OPS[op], name, detail)


class Registry:
    """A registry contract at ``address``; ``Registry.for_deploy`` computes the address of a fresh one."""

    def __init__(self, client: ToncenterClient, address: Address, state_init: StateInit | None = None) -> None:
        self.client = client
        self.address = address
        self.state_init = state_init

    @classmethod
    def for_deploy(cls, client: ToncenterClient, owner: Address, params: RegistryParams) -> Registry:
        state_init = state_init_for(contract_code("registry"), registry_init_data(owner, params))
        return cls(client, address_of(state_init), state_init)

    async def is_deployed(self) -> bool:
        return (await self.client.get_address_information(self.address)).active

    async def deploy(self, wallet: Wallet, value: int = DEPLOY_VALUE) -> Transaction:
        """Deploy with an empty message from ``wallet``; ``value`` stays as the registry's gas balance."""
        if self.state_init is None:
            raise BadRequest("this Registry was opened by address; use Registry.for_deploy to deploy one")
        return await self._send(wallet, Builder().end_cell(), value, state_init=self.state_init)

    async def set_params(self, owner: Wallet, params: RegistryParams) -> Transaction:
        return await self._send(owner, set_params_body(params))

    async def upsert_model(self, owner: Wallet, model: ModelEntry) -> Transaction:
        return await self._send(owner, upsert_model_body(model))

    async def remove_model(self, owner: Wallet, name: str) -> Transaction:
        return await self._send(owner, remove_model_body(name))

    async def add_measurement(self, owner: Wallet, key: bytes) -> Transaction:
        """Allow an image measurement; ``key`` is ``measurement_key(measurement)``."""
        return await self._send(owner, add_measurement_body(key))

    async def remove_measurement(self, owner: Wallet, key: bytes) -> Transaction:
        return await self._send(owner, remove_measurement_body(key))

    async def upsert_proxy(self, owner: Wallet, proxy: ProxyEntry) -> Transaction:
        return await self._send(owner, upsert_proxy_body(proxy))

    async def remove_proxy(self, owner: Wallet, proxy_id: int) -> Transaction:
        return await self._send(owner, remove_proxy_body(proxy_id))

    async def change_owner(self, owner: Wallet, new_owner: Address) -> Transaction:
        return await self._send(owner, change_owner_body(new_owner))

    async def get_owner(self) -> Address:
        (owner,) = await self._get("get_owner")
        return read_address(owner)

    async def get_params(self) -> RegistryParams:
        fee, min_client, min_worker, close_delay = (cast(int, v) for v in await self._get("get_params"))
        return RegistryParams(fee, min_client, min_worker, close_delay)

    async def get_model(self, name: str) -> ModelEntry | None:
        found, weights, prompt, cached, completion, _name = await self._get(
            "get_model", int.from_bytes(model_name_hash(name), "big")
        )
        if not found:
            return None
        weights_hash = cast(int, weights).to_bytes(32, "big")
        return ModelEntry(name, weights_hash, cast(int, prompt), cast(int, cached), cast(int, completion))

    async def get_models(self) -> list[ModelEntry]:
        (root,) = await self._get("get_models")
        return cast(list[ModelEntry], _dict_items(root, lambda _key, value: _model_from_slice(value)))

    async def is_measurement_allowed(self, key: bytes) -> bool:
        (allowed,) = await self._get("is_measurement_allowed", int.from_bytes(key, "big"))
        return bool(allowed)

    async def get_measurements(self) -> list[bytes]:
        (root,) = await self._get("get_measurements")
        return cast(list[bytes], _dict_items(root, lambda key, _value: key.to_bytes(32, "big")))

    async def get_proxy(self, proxy_id: int) -> ProxyEntry | None:
        found, address, public_key, endpoint = await self._get("get_proxy", proxy_id)
        if not found or not isinstance(endpoint, Cell):
            return None
        key = cast(int, public_key).to_bytes(32, "big")
        return ProxyEntry(proxy_id, read_address(address), key, read_string(endpoint, ENDPOINT_DECODING))

    async def get_proxies(self) -> list[ProxyEntry]:
        (root,) = await self._get("get_proxies")
        return cast(list[ProxyEntry], _dict_items(root, _proxy_from_slice))

    async def policy_history(self, limit: int = 1000) -> list[PolicyChange]:
        """Every change to the allow-lists in the registry's last ``limit`` transactions, oldest first: the
        public record of which images and models the network has accepted, and when."""
        transactions = await self.client.get_transactions(self.address, limit=limit)
        return [c for c in (policy_change(tx) for tx in reversed(transactions)) if c is not None]

    async def _get(self, method: str, *args: int) -> list[StackValue]:
        return await self.client.run_get_method(self.address, method, args)

    async def _send(
        self, wallet: Wallet, body: Cell, value: int = OWNER_OP_VALUE, *, state_init: StateInit | None = None
    ) -> Transaction:
        return await send_checked(
            self.client,
            wallet,
            self.address,
            body=body,
            value=value,
            exit_codes=EXIT_CODES,
            state_init=state_init,
        )
