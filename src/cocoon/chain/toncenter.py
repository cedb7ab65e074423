"""An async client for the toncenter v2 HTTP API: the one chain client cocoon uses.

It talks to the local devnet and to toncenter's testnet/mainnet unchanged (same paths, same JSON
shapes); get-method stacks decode to Python ints, cells (a slice reads as its cell), ``None`` and lists.

Both toncenter servers (the C++ one behind toncenter.com and the older Python ``ton-http-api``) hand a
get-method's stack entries through tonlib and re-render them; the shapes read here are the ones they produce:

- a slice comes back as ``["cell", {"bytes": <BOC>, "object": ...}]``, never ``["slice", ...]``
  (``tvm_valuetypes.serialize_tvm_element``, which ``ton-http-api`` uses, renders ``tvm.stackEntrySlice`` and
  ``tvm.stackEntryCell`` alike as ``"cell"``), so a reader of an address takes a Cell or a Slice;
- a TVM null comes back as an empty ``["list", {"elements": []}]`` (tonlib has no null entry; ``@ton/ton``'s
  ``TonClient`` ``parseStack`` reads an empty tuple or list as null: "toncenter.com missbehaviour"); ``["null",
  null]`` is read too;
- tuples and lists hold tonlib's typed entries (``tvm.stackEntryNumber``, ``tvm.stackEntryCell``, ...);
- a failure is the envelope ``{"ok": false, "error": "...", "code": N}`` (416, 422, 500, 504, 542, ...), except
  a 429 whose text is in ``result``.

Arguments go out as ``["num", ...]``, ``["tvm.Cell", <BOC>]`` and ``["tvm.Slice", <BOC>]``; toncenter refuses
``tvm.Builder``, so no builder is ever sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.transaction import Transaction as TlbTransaction

from cocoon.chain.address import address_text
from cocoon.chain.ratelimit import API_KEY_HINT, limiter_for
from cocoon.errors import BadRequest, ChainError, ChainUnavailable, UpstreamTimeout, map_http_errors

log = logging.getLogger(__name__)

StackValue = int | Cell | None | list["StackValue"]
StackArg = int | Cell | Slice
AccountStatus = Literal["active", "uninitialized", "frozen"]

# 542 is the C++ server's liteserver error, 504 its liteserver timeout; 500 is tonlib's (also a refused message).
_READ_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 542})
_SEND_RETRY_STATUSES = _READ_RETRY_STATUSES - {500}
_ATTEMPTS = 6
_MAX_BACKOFF_S = 4.0
_API_V2 = "/api/v2"
LOCATE_LIMIT = 1000  # transactions read back when looking for one (ten pages)
TRANSACTIONS_PAGE = 100  # the most transactions one getTransactions answers on either toncenter server
CONFIG_GLOBAL_ID = 19  # `_ global_id:int32 = ConfigParam 19`: mainnet -239, testnet -3


@dataclass(frozen=True, slots=True)
class AccountState:
    """An account as ``getAddressInformation`` reports it; ``balance`` in nanoton."""

    address: Address
    balance: int
    status: AccountStatus
    code: Cell | None
    data: Cell | None
    last_lt: int
    sync_utime: int

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """The parts of a message the wrappers need: ends, value (nanoton), op code, body, and ``created_lt``
    (0 for an external message), which with ``source`` names an internal message uniquely."""

    source: Address | None
    destination: Address | None
    value: int
    body: Cell
    created_lt: int = 0

    @property
    def op(self) -> int | None:
        body = Slice.from_cell(self.body)
        return cast(int, body.load_uint(32)) if body.remaining_bits >= 32 else None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transaction of an account, decoded from toncenter's ``data`` BOC; fees in nanoton."""

    lt: int
    hash: bytes
    utime: int
    fee: int
    storage_fee: int
    in_msg: MessageSummary | None
    out_msgs: tuple[MessageSummary, ...]
    aborted: bool
    exit_code: int | None

    @property
    def succeeded(self) -> bool:
        return not self.aborted and self.exit_code in (0, 1, None)


class ToncenterClient:
    """toncenter v2 client; ``base_url`` is e.g. ``https://testnet.toncenter.com`` or the devnet URL, with or
    without the ``/api/v2`` that toncenter's docs print as the endpoint (both name the same API).

    Every call waits its turn under the API key's rate limit (``rps``: the key's plan, default 10/s; keyless:
    1/s), shared by every client of the key in the process, and transient failures are retried (see ``_call``),
    ``retry_backoff`` seconds after the first, doubling up to 4 s.
    ``transport`` replaces the network (tests pass an ``httpx.MockTransport`` answering as toncenter does).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 15.0,
        rps: float | None = None,
        retry_backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.base_url = api_root(base_url)
        self._api_key = api_key
        self._rps = rps
        self._backoff = retry_backoff
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._global_id: int | None = None

    async def __aenter__(self) -> ToncenterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send_boc(self, boc: bytes | Cell) -> None:
        """Send a serialized external message; ChainError when the chain does not accept it."""
        raw = boc_bytes(boc) if isinstance(boc, Cell) else boc
        await self._call("POST", "/api/v2/sendBoc", json={"boc": base64.b64encode(raw).decode()}, send=True)

    async def run_get_method(
        self, address: Address | str, method: str, stack: Sequence[StackArg] = ()
    ) -> list[StackValue]:
        """Run a get-method and return its result stack (bottom first); ChainError on a non-zero exit code."""
        payload = {"address": _text(address), "method": method, "stack": [_encode_arg(a) for a in stack]}
        result = await self._call("POST", "/api/v2/runGetMethod", json=payload)
        exit_code = int(result.get("exit_code", 0))
        if exit_code not in (0, 1):
            raise ChainError(f"get-method {method} on {_text(address)} failed with exit code {exit_code}")
        return [_decode_entry(entry) for entry in result.get("stack", [])]

    async def get_config_param(self, config_id: int) -> Cell:
        """The cell of global config param ``config_id`` (``getConfigParam``); ChainError when the chain has none."""
        result = await self._call("GET", "/api/v2/getConfigParam", params={"config_id": config_id})
        try:
            return Cell.one_from_boc(base64.b64decode(result["config"]["bytes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(
                f"getConfigParam {config_id} at {self.base_url} answered an unexpected {result!r}"
            ) from exc

    async def global_id(self) -> int:
        """This chain's global id (config param 19: mainnet -239, testnet -3), read once and cached.

        Vouchers name it, so that one signed for a channel on one chain never pays on another chain.
        """
        if self._global_id is None:
            cell = await self.get_config_param(CONFIG_GLOBAL_ID)
            body = Slice.from_cell(cell)
            if body.remaining_bits < 32:
                raise ChainError(f"config param 19 at {self.base_url} holds {body.remaining_bits} bits, not an int32")
            self._global_id = int(body.load_int(32))
        return self._global_id

    async def get_address_information(self, address: Address | str) -> AccountState:
        result = await self._call("GET", "/api/v2/getAddressInformation", params={"address": _text(address)})
        state = str(result.get("state", "uninitialized"))
        return AccountState(
            address=Address(address) if isinstance(address, str) else address,
            balance=int(result.get("balance", 0)),
            status=cast(AccountStatus, state if state in ("active", "frozen") else "uninitialized"),
            code=_maybe_cell(result.get("code")),
            data=_maybe_cell(result.get("data")),
            last_lt=int((result.get("last_transaction_id") or {}).get("lt", 0)),
            sync_utime=int(result.get("sync_utime", 0)),
        )

    async def get_balance(self, address: Address | str) -> int:
        return (await self.get_address_information(address)).balance

    async def get_wallet_seqno(self, address: Address | str) -> int:
        """The wallet's seqno; 0 for a wallet that is not deployed yet."""
        result = await self._call("GET", "/api/v2/getWalletInformation", params={"address": _text(address)})
        if "seqno" in result and result["seqno"] is not None:
            return int(result["seqno"])
        if result.get("account_state") != "active":
            return 0
        (seqno, *_) = await self.run_get_method(address, "seqno")
        return int(cast(int, seqno))

    async def get_transactions(
        self,
        address: Address | str,
        *,
        limit: int = 10,
        start_at: tuple[int, bytes] | None = None,
        to_lt: int | None = None,
    ) -> list[Transaction]:
        """Up to ``limit`` of the account's transactions, newest first.

        ``start_at``: the ``(lt, hash)`` of the newest one to return (default: the account's latest);
        ``to_lt``: stop at transactions of this lt or older. More than one page of toncenter's is fetched
        page by page. BadRequest when ``limit`` is not positive.
        """
        if limit < 1:
            raise BadRequest(f"ask for at least one transaction, not {limit}")
        found: list[Transaction] = []
        cursor = start_at
        while len(found) < limit:
            # A page starts at its (lt, hash) inclusive, so every page after the first repeats one.
            ask = min(TRANSACTIONS_PAGE, limit - len(found) + (1 if found else 0))
            page = await self._transactions_page(address, ask, cursor, to_lt)
            fresh = [tx for tx in page if not found or tx.lt < found[-1].lt]
            found.extend(fresh[: limit - len(found)])
            if len(page) < ask or not fresh:
                break  # the account's history (or the range down to to_lt) ends here
            cursor = (found[-1].lt, found[-1].hash)
        return found

    async def _transactions_page(
        self, address: Address | str, limit: int, start_at: tuple[int, bytes] | None, to_lt: int | None
    ) -> list[Transaction]:
        # Both toncenter servers refuse limit > 100 and take lt only with hash: the C++ server answers 422
        # "lt and hash should be used together" (ton-http-api-cpp GetTransactionsHandler::ValidateRequest),
        # the Python one declares `limit: le=100` and "lt ... must be sent with *hash*" (ton-http-api
        # pyTON/main.py get_transactions). Both read a 64-digit hex hash.
        params: dict[str, str | int] = {"address": _text(address), "limit": limit}
        if start_at is not None:
            params["lt"], params["hash"] = start_at[0], start_at[1].hex()
        if to_lt is not None:
            params["to_lt"] = to_lt
        result = await self._call("GET", "/api/v2/getTransactions", params=params)
        return [_decode_transaction(item) for item in cast(list[dict[str, Any]], result)]

    async def wait_for_seqno(self, address: Address | str, above: int, *, timeout: float = 60.0) -> int:
        """Poll until the wallet's seqno exceeds ``above``; UpstreamTimeout after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            seqno = await self.get_wallet_seqno(address)
            if seqno > above:
                return seqno
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(
                    f"wallet {_text(address)} still at seqno {seqno} after {timeout:.0f} s; "
                    "the external message was probably dropped (low balance or expired)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def wait_for_transaction(
        self,
        address: Address | str,
        *,
        after_lt: int,
        match: Callable[[Transaction], bool] = lambda _tx: True,
        timeout: float = 60.0,
    ) -> Transaction:
        """Poll until ``address`` has a transaction newer than ``after_lt`` that ``match`` accepts (the oldest
        such); UpstreamTimeout after ``timeout`` seconds. Every transaction since ``after_lt`` is read, page by
        page, so a busy account cannot push the one sought out of sight."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            for tx in reversed(await self.get_transactions(address, limit=LOCATE_LIMIT, to_lt=after_lt)):
                if tx.lt > after_lt and match(tx):
                    return tx
            if time.monotonic() >= deadline:
                raise UpstreamTimeout(f"no matching transaction on {_text(address)} within {timeout:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def locate_result(self, message: MessageSummary, *, timeout: float = 60.0) -> Transaction:
        """The transaction in which ``message`` (an internal message out of a transaction already found) was
        received: toncenter's ``tryLocateResultTx``, done through ``getTransactions`` so that it works on every
        server. The receiving account's transaction whose incoming message has the same source and
        ``created_lt`` is the one; no other message can share both."""
        if message.destination is None or message.source is None or message.created_lt == 0:
            raise BadRequest("only an internal message with its source and created_lt can be located")
        source, created_lt = message.source, message.created_lt

        def received(tx: Transaction) -> bool:
            return tx.in_msg is not None and tx.in_msg.source == source and tx.in_msg.created_lt == created_lt

        return await self.wait_for_transaction(
            message.destination, after_lt=created_lt, match=received, timeout=timeout
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        send: bool = False,
    ) -> Any:
        """One API call under the key's rate limit, retried while the failure is transient.

        Reads are retried on 429, 500, 502, 503, 504, 542 and lost connections: none of them changed anything.
        A send (``send=True``) is retried on the same except 500, which is the liteserver refusing the message;
        sending the same external message again is safe, since the wallet applies one seqno once.
        """
        retry_on = _SEND_RETRY_STATUSES if send else _READ_RETRY_STATUSES
        limiter = limiter_for(self.base_url, self._api_key, self._rps)
        delay = self._backoff
        for attempt in range(1, _ATTEMPTS + 1):
            if limiter is not None:
                await limiter.acquire()
            try:
                with map_http_errors(
                    f"the chain API at {self.base_url}", error=ChainUnavailable, timeout=ChainUnavailable
                ):
                    response = await self._http.request(method, path, json=json, params=params)
            except ChainUnavailable as exc:
                if attempt == _ATTEMPTS or not _transient_transport(exc):
                    raise
                log.info("%s: %s; retrying in %.1f s", path, exc, delay)
            else:
                if response.status_code not in retry_on:
                    return self._result(path, response)
                if response.status_code == 429 and limiter is not None:
                    limiter.penalize(delay)
                if attempt == _ATTEMPTS:
                    return self._result(path, response)
                log.info("%s answered HTTP %d; retrying in %.1f s", path, response.status_code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _result(self, path: str, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError as exc:
            raise ChainError(f"{path} answered HTTP {response.status_code} with a non-JSON body") from exc
        if not isinstance(body, dict):
            raise ChainError(f"{path} answered HTTP {response.status_code} with an unexpected body")
        if body.get("ok"):
            return body["result"]
        code = body.get("code", response.status_code)
        # toncenter's 429 carries its text in ``result``; every other error in ``error``.
        error = body.get("error") or body.get("result") or "no error text"
        if response.status_code == 400 or code == 400:
            raise BadRequest(f"{path}: {error}")
        if response.status_code == 429 or code == 429:
            hint = API_KEY_HINT if not self._api_key else "the API key's plan allows fewer requests a second"
            raise ChainUnavailable(f"{path} is rate-limited at {self.base_url} ({error}); {hint}")
        if response.status_code in _READ_RETRY_STATUSES:
            raise ChainUnavailable(f"{path} failed with code {code} (retried {_ATTEMPTS} times): {error}")
        raise ChainError(f"{path} failed with code {code}: {error}")


def _transient_transport(exc: ChainUnavailable) -> bool:
    """A lost connection or timeout is worth another try; a malformed URL is not."""
    return not isinstance(exc.__cause__, (httpx.UnsupportedProtocol, httpx.InvalidURL))


def api_root(base_url: str) -> str:
    """The root that ``/api/v2/<method>`` paths are joined to: ``base_url`` less trailing slashes and a
    trailing ``/api/v2`` (toncenter's docs give the endpoint as ``https://testnet.toncenter.com/api/v2``)."""
    root = base_url.rstrip("/")
    if root.endswith(_API_V2):
        root = root[: -len(_API_V2)].rstrip("/")
    return root


def boc_bytes(cell: Cell) -> bytes:
    """``cell`` serialized as a bag of cells."""
    return bytes(cell.to_boc())  # type: ignore[no-untyped-call]


def _text(address: Address | str) -> str:
    return address if isinstance(address, str) else address_text(address)


def _maybe_cell(boc64: object) -> Cell | None:
    if not isinstance(boc64, str) or not boc64:
        return None
    return Cell.one_from_boc(base64.b64decode(boc64))


def _boc64(cell: Cell) -> str:
    return base64.b64encode(boc_bytes(cell)).decode()


def _encode_arg(arg: StackArg) -> list[str]:
    if isinstance(arg, bool):
        return ["num", str(-1 if arg else 0)]
    if isinstance(arg, int):
        return ["num", str(arg)]
    if isinstance(arg, Cell):
        return ["tvm.Cell", _boc64(arg)]
    return ["tvm.Slice", _boc64(Builder().store_slice(arg).end_cell())]


def _decode_entry(entry: Any) -> StackValue:
    try:
        kind, value = entry[0], entry[1]
        if kind == "num":
            return int(str(value), 16) if "0x" in str(value) else int(str(value))
        if kind == "null":
            return None
        if kind in ("cell", "slice"):
            # A slice arrives as "cell" from both servers; the devnet of old sent "slice": one type either way.
            return Cell.one_from_boc(base64.b64decode(value["bytes"]))
        if kind in ("tuple", "list"):
            elements = value.get("elements") or []
            # tonlib renders a TVM null as an empty list; an empty tuple is indistinguishable and reads as null too.
            return [_decode_typed(element) for element in elements] if elements else None
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ChainError(f"unreadable get-method result entry {entry!r}: {exc}") from exc
    raise ChainError(f"unsupported get-method result entry {kind!r}")


def _decode_typed(element: dict[str, Any]) -> StackValue:
    """Decode tonlib's typed stack entries, which toncenter uses inside tuples."""
    kind = element.get("@type")
    if kind == "tvm.stackEntryNumber":
        return int(element["number"]["number"])
    if kind == "tvm.stackEntryCell":
        return Cell.one_from_boc(base64.b64decode(element["cell"]["bytes"]))
    if kind == "tvm.stackEntrySlice":
        return Cell.one_from_boc(base64.b64decode(element["slice"]["bytes"]))
    if kind in ("tvm.stackEntryTuple", "tvm.stackEntryList"):
        inner = element.get("tuple") or element.get("list") or {}
        elements = inner.get("elements") or []
        return [_decode_typed(e) for e in elements] if elements else None
    return None


def _summary(message: Any) -> MessageSummary:
    info = message.info
    value = getattr(info, "value_coins", 0)
    src = getattr(info, "src", None)
    dest = getattr(info, "dest", None)
    return MessageSummary(
        source=src if isinstance(src, Address) else None,
        destination=dest if isinstance(dest, Address) else None,
        value=int(value),
        body=cast(Cell, message.body),
        created_lt=int(getattr(info, "created_lt", 0) or 0),
    )


def _decode_transaction(item: dict[str, Any]) -> Transaction:
    cell = Cell.one_from_boc(base64.b64decode(item["data"]))
    tx = TlbTransaction.deserialize(Slice.from_cell(cell))
    return transaction_from_tlb(cell, tx, fee=item.get("fee"), storage_fee=item.get("storage_fee", 0))


def transaction_from_tlb(
    cell: Cell, tx: TlbTransaction, *, fee: object = None, storage_fee: object = None
) -> Transaction:
    """cocoon's ``Transaction`` from a transaction's root ``cell`` and its parse ``tx``.

    ``fee`` and ``storage_fee`` are toncenter's figures where it gives them; without them the fee is the
    transaction's ``total_fees`` and the storage fee what its storage phase collected.
    """
    description = tx.description
    compute = getattr(description, "compute_ph", None)
    exit_code = getattr(compute, "exit_code", None) if compute is not None and compute.type_ == "vm" else None
    storage = getattr(description, "storage_ph", None)
    collected = getattr(storage, "storage_fees_collected", 0) if storage is not None else 0
    return Transaction(
        lt=int(tx.lt),
        hash=cell.hash,
        utime=int(tx.now),
        fee=int(cast(int, fee if fee is not None else tx.total_fees.grams)),
        storage_fee=int(cast(int, storage_fee if storage_fee is not None else collected)),
        in_msg=_summary(tx.in_msg) if tx.in_msg is not None else None,
        out_msgs=tuple(_summary(m) for m in tx.out_msgs),
        aborted=bool(getattr(description, "aborted", False)),
        exit_code=None if exit_code is None else int(exit_code),
    )
