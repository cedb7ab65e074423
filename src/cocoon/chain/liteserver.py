"""Proof-checked chain reads through a TON liteserver: the chain client for production networks.

``LiteserverClient`` is a ``ToncenterClient`` whose reads come from a liteserver (pytoniq's ``LiteClient``,
ADNL over TCP) with Merkle proofs checked here against a masterchain block: account states, config params,
the transaction list (a hash chain anchored in the proven account state) and get-methods, which run locally
in the TVM (``NodeTvm``: @ton/sandbox's emulator, the devnet's) on the proven code and data instead of
trusting a server's result. Sends stay on the HTTP API:
a send needs no proof (a server that drops it is caught by the proven seqno not moving), and toncenter
answers a refused message with the reason. The devnet has no liteserver; ``open_chain`` picks the path.

Trust: at ``trust_level=0`` (the default) pytoniq proves every masterchain block it reads at from the
global config's init block through key blocks' validator signatures, caching key blocks in ``./.blockstore``;
at ``trust_level=1`` it believes the liteserver about which masterchain block is the latest and checks
everything below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import httpx
from pytoniq_core.boc.address import Address
from pytoniq_core.boc.builder import Builder
from pytoniq_core.boc.cell import Cell
from pytoniq_core.boc.slice import Slice
from pytoniq_core.tlb.transaction import Transaction as TlbTransaction

from cocoon.chain.address import address_text
from cocoon.chain.local_tvm import INSTALL_HINT, ContractState, NodeTvm
from cocoon.chain.network import ChainReads, Network
from cocoon.chain.toncenter import (
    AccountState,
    AccountStatus,
    StackArg,
    StackValue,
    ToncenterClient,
    Transaction,
    transaction_from_tlb,
)
from cocoon.errors import BadRequest, ChainError, CocoonError, ConfigError, UpstreamTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")
TrustLevel = Literal[0, 1]
TRANSACTIONS_PAGE = 16  # the most transactions one liteServer.getTransactions answers


@dataclass(frozen=True, slots=True)
class ProvenAccount:
    """An account state proven against a masterchain block, with what a local get-method needs from it."""

    state: AccountState
    last_hash: bytes  # of the account's last transaction: the anchor of its transaction list
    config_hash: bytes | None  # of the config dictionary in the masterchain state the proof goes through


class LiteserverClient(ToncenterClient):
    """A ``ToncenterClient`` that reads through a liteserver with proofs; sends go to ``http_url``.

    ``global_config`` is a TON global config (``https://ton.org/global.config.json``, or the testnet's) as a
    path or a parsed dict; its liteservers are tried in order until one connects, on the first read and after
    a connection is lost. Every failure surfaces as ``ChainError`` (``UpstreamTimeout`` for a timeout), a
    proof that does not verify included. ConfigError when the config is unreadable or pytoniq is missing,
    or, on the first get-method, when Node.js is. Get-methods run in ``tvm`` if given (the caller closes
    it), else in a ``NodeTvm`` of the client's own, started on first use and stopped by ``aclose``.
    """

    def __init__(
        self,
        global_config: Path | str | Mapping[str, Any],
        *,
        http_url: str,
        api_key: str | None = None,
        rps: float | None = None,
        trust_level: TrustLevel = 0,
        timeout: float = 15.0,
        connect_timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
        tvm: NodeTvm | None = None,
    ) -> None:
        super().__init__(http_url, api_key, rps=rps, timeout=timeout, transport=transport)
        self.tvm = tvm if tvm is not None else NodeTvm()
        self._owns_tvm = tvm is None
        self.global_config = load_global_config(global_config)
        self.trust_level = trust_level
        self.timeout = timeout
        # Connecting at trust level 0 first syncs key blocks from the init block: far longer than one read.
        self.connect_timeout = connect_timeout
        self._lite: Any = None
        self._next_server = 0
        self._connecting = asyncio.Lock()
        self._configs: dict[bytes, Cell] = {}  # config dictionaries by hash: one per config change, proven

    async def aclose(self) -> None:
        await self._drop()
        if self._owns_tvm:
            await self.tvm.aclose()
        await super().aclose()

    async def get_address_information(self, address: Address | str) -> AccountState:
        return (await self._account(_address(address))).state

    async def get_wallet_seqno(self, address: Address | str) -> int:
        """The wallet's seqno, run locally on its proven state; 0 for a wallet that is not deployed yet."""
        account = await self._account(_address(address))
        if not account.state.active:
            return 0
        (seqno, *_) = await self._run_local(account, "seqno", ())
        return int(cast(int, seqno))

    async def run_get_method(
        self, address: Address | str, method: str, stack: Sequence[StackArg] = ()
    ) -> list[StackValue]:
        """Run a get-method locally on the account's proven state; ChainError when it is not active."""
        account = await self._account(_address(address))
        if not account.state.active:
            raise ChainError(
                f"get-method {method} on {_text(address)}: the account is {account.state.status}, no contract runs"
            )
        return await self._run_local(account, method, stack)

    async def get_config_param(self, config_id: int) -> Cell:
        """Config param ``config_id``, proven against the latest masterchain block; ChainError if it has none."""

        async def read(lite: Any) -> Cell:
            block = lite.last_mc_block
            answer = await lite.liteserver_request(
                "getConfigParams", {"mode": 0, "id": block.to_dict(), "param_list": [config_id]}
            )
            return proven_config_param(answer, block.root_hash, config_id)

        return await self._read(f"config param {config_id}", read)

    async def get_transactions(
        self,
        address: Address | str,
        *,
        limit: int = 10,
        start_at: tuple[int, bytes] | None = None,
        to_lt: int | None = None,
    ) -> list[Transaction]:
        """Up to ``limit`` of the account's transactions, newest first, as ``ToncenterClient.get_transactions``.

        Each transaction's hash is checked to be the one its successor names (the first: the proven account's
        last transaction, or ``start_at``'s hash), so the list is as good as its anchor.
        """
        if limit < 1:
            raise BadRequest(f"ask for at least one transaction, not {limit}")
        target = _address(address)
        if start_at is None:
            account = await self._account(target)
            if account.state.last_lt == 0:
                return []
            start_at = (account.state.last_lt, account.last_hash)
        cursor: tuple[int, bytes] | None = start_at
        found: list[Transaction] = []
        while cursor is not None and len(found) < limit:
            page, cursor = await self._proven_page(target, min(TRANSACTIONS_PAGE, limit - len(found)), cursor)
            for tx in page:
                if to_lt is not None and tx.lt <= to_lt:
                    return found
                found.append(tx)
            if not page:
                break
        return found[:limit]

    async def _proven_page(
        self, address: Address, count: int, start: tuple[int, bytes]
    ) -> tuple[list[Transaction], tuple[int, bytes] | None]:
        async def read(lite: Any) -> tuple[list[Transaction], tuple[int, bytes] | None]:
            answer = await lite.liteserver_request(
                "getTransactions",
                {"count": count, "account": address.to_tl_account_id(), "lt": start[0], "hash": start[1].hex()},
            )
            return chained_transactions(Cell.from_boc(answer["transactions"]) if answer["transactions"] else [], start)

        return await self._read(f"transactions of {address_text(address)}", read)

    async def _account(self, address: Address) -> ProvenAccount:
        async def read(lite: Any) -> ProvenAccount:
            block = lite.last_mc_block
            answer = await lite.liteserver_request(
                "getAccountState", {"id": block.to_dict(), "account": address.to_tl_account_id()}
            )
            return prove_account(answer, block, address)

        return await self._read(f"account {address_text(address)}", read)

    async def _run_local(self, account: ProvenAccount, method: str, stack: Sequence[StackArg]) -> list[StackValue]:
        state = account.state
        if state.code is None or state.data is None:
            raise ChainError(f"account {address_text(state.address)} is active but its proof holds no code or data")
        if _has_library_cells(state.code):
            # Libraries would need fetching and proving too; our contracts and wallet v4r2 use none, so refuse.
            raise ChainError(f"{address_text(state.address)}'s code calls library cells, which are not read here")
        config = await self._config(account.config_hash)
        contract = ContractState(state.address, state.code, state.data, state.balance, state.sync_utime, config)
        return await self.tvm.run_get_method(contract, method, stack)

    async def _config(self, config_hash: bytes | None) -> Cell:
        if config_hash is None:
            raise ChainError("the liteserver's account proof names no masterchain config to run get-methods with")
        if config_hash not in self._configs:

            async def read(lite: Any) -> Cell:
                answer = await lite.liteserver_request("getConfigAll", {"mode": 0, "id": lite.last_mc_block.to_dict()})
                return config_from_proof(Cell.one_from_boc(answer["config_proof"]), config_hash)

            self._configs[config_hash] = await self._read("the masterchain config", read)
        return self._configs[config_hash]

    async def _read(self, what: str, read: Callable[[Any], Awaitable[T]]) -> T:
        """``read(lite)`` on a connected client, once more on a fresh connection if this one was lost."""
        for attempt in (1, 2):
            lite = await self._connected()
            peer = f"the liteserver at {lite.server.host}:{lite.server.port}"
            try:
                with map_liteserver_errors(f"reading {what} from {peer}"):
                    return await asyncio.wait_for(read(lite), self.timeout)
            except ChainError as exc:
                if not _connection_lost(exc.__cause__) or attempt == 2:
                    raise
                log.warning("liteserver connection lost; reconnecting peer=%s error=%r", peer, exc.__cause__)
                await self._drop()
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _connected(self) -> Any:
        async with self._connecting:
            if self._lite is not None and self._lite.inited and not _updater_died(self._lite):
                return self._lite
            await self._drop()
            lite_client = _lite_client_class()
            servers = self.global_config["liteservers"]
            failures: list[CocoonError] = []
            for _ in range(len(servers)):
                index = self._next_server
                self._next_server = (index + 1) % len(servers)
                lite = lite_client.from_config(dict(self.global_config), index, self.trust_level, self.timeout)
                peer = f"liteserver {index} of the global config ({lite.server.host}:{lite.server.port})"
                try:
                    with map_liteserver_errors(f"connecting to {peer}"):
                        await asyncio.wait_for(lite.connect(), self.connect_timeout)
                except CocoonError as exc:
                    failures.append(exc)
                    await _close_quietly(lite)
                    continue
                self._lite = lite
                return lite
            kind = UpstreamTimeout if all(isinstance(f, UpstreamTimeout) for f in failures) else ChainError
            raise kind(
                f"none of the {len(servers)} liteservers of the global config answered; last: {failures[-1].message}; "
                "check the network, or read over HTTP (chain reads = 'http')"
            )

    async def _drop(self) -> None:
        lite, self._lite = self._lite, None
        if lite is not None:
            await _close_quietly(lite)


def open_chain(
    url: str,
    api_key: str | None = None,
    *,
    network: Network = "devnet",
    reads: ChainReads = "auto",
    liteserver_config: Path | str | Mapping[str, Any] | None = None,
    rps: float | None = None,
    trust_level: TrustLevel = 0,
    timeout: float = 15.0,
) -> ToncenterClient:
    """The chain client for a role on ``network``: toncenter (or the devnet) at ``url`` for everything when
    ``reads`` is ``"http"``; reads through a liteserver of ``liteserver_config`` with proofs, sends to ``url``,
    when it is ``"liteserver"``. ``"auto"`` is a liteserver on mainnet, where a lying HTTP endpoint could make
    a role serve an empty channel or fund a forged one, and HTTP elsewhere. ConfigError when a liteserver is
    asked for without a config, or pytoniq is not installed."""
    if reads == "http" or (reads == "auto" and network != "mainnet"):
        return ToncenterClient(url, api_key, rps=rps, timeout=timeout)
    if liteserver_config is None:
        raise ConfigError(
            f"proof-checked chain reads ({'the default on mainnet' if reads == 'auto' else 'chain_reads'}) need a "
            "TON global config with liteservers: save https://ton.org/global.config.json to a file and set "
            'liteserver_config to it, or set chain_reads = "http" to trust chain_url\'s answers'
        )
    _lite_client_class()  # fail here, at startup, rather than on the first read
    return LiteserverClient(
        liteserver_config, http_url=url, api_key=api_key, rps=rps, trust_level=trust_level, timeout=timeout
    )


class ChainSettings(Protocol):
    """The chain fields every role's settings carry (``cocoon.config``)."""

    chain_url: str | None
    chain_api_key: str | None
    network: Network
    chain_reads: ChainReads
    liteserver_config: Path | None
    chain_rps: float


def chain_for(settings: ChainSettings) -> ToncenterClient:
    """The chain client a role's settings ask for (``open_chain``); ConfigError when chain_url is not set."""
    if not settings.chain_url:
        raise ConfigError("chain_url is not set: give the toncenter v2 API of the network (or the devnet's URL)")
    return open_chain(
        settings.chain_url,
        settings.chain_api_key,
        network=settings.network,
        reads=settings.chain_reads,
        liteserver_config=settings.liteserver_config,
        rps=settings.chain_rps,
    )


def load_global_config(source: Path | str | Mapping[str, Any]) -> Mapping[str, Any]:
    """A TON global config from a file or a dict, checked to list liteservers and an init block."""
    if isinstance(source, Mapping):
        config: Any = source
    else:
        try:
            config = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the TON global config {source}: {exc}") from exc
    servers = config.get("liteservers") if isinstance(config, Mapping) else None
    init_block = (config.get("validator") or {}).get("init_block") if isinstance(config, Mapping) else None
    if not isinstance(servers, list) or not servers or not isinstance(init_block, dict):
        raise ConfigError(
            f"{source if not isinstance(source, Mapping) else 'the global config'} is not a TON global config "
            "with liteservers and validator.init_block (see https://ton.org/global.config.json)"
        )
    return cast(Mapping[str, Any], config)


def prove_account(answer: Mapping[str, Any], block: Any, address: Address) -> ProvenAccount:
    """The account in a ``liteServer.accountState`` answer, its proofs checked against masterchain ``block``.

    ProofError (pytoniq_core's, mapped to ChainError by the client) when a proof does not verify. An account
    the server reports absent is not proven absent (pytoniq cannot check that); it reads as uninitialized.
    """
    from pytoniq_core.proof.check_proof import check_account_proof, check_shard_proof
    from pytoniq_core.tl.block import BlockIdExt
    from pytoniq_core.tlb.account import Account
    from pytoniq_core.tlb.block import ShardStateUnsplit

    shard_block = BlockIdExt.from_dict(answer["shardblk"])
    if not answer["state"]:
        empty = AccountState(address, 0, "uninitialized", None, None, 0, 0)
        return ProvenAccount(empty, bytes(32), None)
    root = Cell.one_from_boc(answer["state"])
    check_shard_proof(shard_proof=answer["shard_proof"], blk=block, shrd_blk=shard_block)
    described = check_account_proof(
        proof=answer["proof"], shrd_blk=shard_block, address=address, account_state_root=root, return_account_descr=True
    )
    account = Account.deserialize(Slice.from_cell(root))
    account_proof = Cell.from_boc(answer["proof"])
    shard_state = ShardStateUnsplit.deserialize(Slice.from_cell(account_proof[1][0]))
    # The config lives in the masterchain state: the shard proof's, or the account proof's own for a
    # masterchain account. Either was just checked against the block, so the hash read from it is proven.
    mc_state = Cell.from_boc(answer["shard_proof"])[1] if block != shard_block else account_proof[1]
    return ProvenAccount(
        state=account_state(address, account, int(described.last_trans_lt), int(shard_state.gen_utime)),
        last_hash=bytes(described.last_trans_hash),
        config_hash=_config_hash(mc_state),
    )


def account_state(address: Address, account: Any, last_lt: int, utime: int) -> AccountState:
    """cocoon's ``AccountState`` from pytoniq_core's ``Account`` (``None``: no account at all)."""
    if account is None:
        return AccountState(address, 0, "uninitialized", None, None, last_lt, utime)
    storage = account.storage
    kind = storage.state.type_
    code = data = None
    if kind == "account_active":
        code, data = storage.state.state_init.code, storage.state.state_init.data
    status = {"account_active": "active", "account_frozen": "frozen"}.get(kind, "uninitialized")
    return AccountState(
        address=address,
        balance=int(storage.balance.grams),
        status=cast(AccountStatus, status),
        code=code,
        data=data,
        last_lt=last_lt,
        sync_utime=utime,
    )


def proven_config_param(answer: Mapping[str, Any], block_hash: bytes, config_id: int) -> Cell:
    """Config param ``config_id`` from a ``liteServer.configInfo`` answer proven against ``block_hash``."""
    from pytoniq_core.proof.check_proof import ProofError, check_block_header_proof

    config_proof = Cell.one_from_boc(answer["config_proof"])
    state_hash = check_block_header_proof(Cell.one_from_boc(answer["state_proof"])[0], block_hash, True)
    if config_proof[0].get_hash(0) != state_hash:
        raise ProofError("the config proof is not of the block's state")
    found = config_params(config_proof[0][3][1]).get(config_id)
    if found is None:
        raise ChainError(f"the chain has no config param {config_id}")
    return found


def config_params(config: Cell) -> dict[int, Cell]:
    """The config dictionary (``Hashmap 32 ^Cell``) as ``{param: cell}``; pruned branches are skipped."""
    parsed = Slice.from_cell(config).load_hashmap(
        32,
        key_deserializer=lambda bits: Builder().store_bits(bits).to_slice().load_int(32),
        value_deserializer=lambda value: value.load_ref(),
    )
    return cast(dict[int, Cell], parsed or {})


def config_from_proof(config_proof: Cell, expected_hash: bytes) -> Cell:
    """The config dictionary in a ``getConfigAll`` state proof, checked to hash to ``expected_hash``.

    pytoniq's own local run takes this dictionary unchecked; the hash comes from a proven masterchain state.
    """
    from pytoniq_core.proof.check_proof import ProofError

    config = config_proof[0][3][1]
    if config.get_hash(0) != expected_hash:
        raise ProofError("the config the liteserver sent is not the one of the proven masterchain state")
    return config


def chained_transactions(
    cells: Sequence[Cell], start: tuple[int, bytes]
) -> tuple[list[Transaction], tuple[int, bytes] | None]:
    """Transactions newest first from ``getTransactions`` cells, each checked to hash to what its successor
    names (the first: ``start``'s hash), and the ``(lt, hash)`` of the one before the last (None: history ends).
    """
    from pytoniq_core.proof.check_proof import ProofError

    expected_lt, expected_hash = start
    found: list[Transaction] = []
    for cell in cells:
        if cell.hash != expected_hash:
            raise ProofError(f"transaction {expected_lt} hashes to {cell.hash.hex()}, not {expected_hash.hex()}")
        tx = TlbTransaction.deserialize(Slice.from_cell(cell))
        found.append(transaction_from_tlb(cell, tx))
        expected_lt, expected_hash = int(tx.prev_trans_lt), bytes(tx.prev_trans_hash)
    return found, (None if expected_lt == 0 else (expected_lt, expected_hash))


@contextlib.contextmanager
def map_liteserver_errors(doing: str) -> Iterator[None]:
    """Turn pytoniq's and the socket's errors inside the block into cocoon's, saying what was ``doing``.

    A timeout becomes UpstreamTimeout; a proof that does not verify, a server's error, a failing get-method or
    a refused or broken connection ChainError (the cause kept as ``__cause__``).
    """
    from pytoniq.liteclient.client import LiteClientError, LiteServerError
    from pytoniq_core.proof.check_proof import ProofError

    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout(f"{doing} timed out; is the liteserver overloaded or unreachable?") from exc
    except ProofError as exc:
        raise ChainError(f"{doing}: the proof does not verify ({exc}); the server is faulty or lying") from exc
    except AssertionError as exc:  # pytoniq checks parts of some proofs with assert
        raise ChainError(f"{doing}: a proof check failed ({exc!r}); the server is faulty or lying") from exc
    except LiteServerError as exc:
        raise ChainError(f"{doing}: the liteserver answered error {exc.code}: {exc.message}") from exc
    except (LiteClientError, OSError, asyncio.IncompleteReadError) as exc:
        raise ChainError(f"{doing} failed: {exc!r}") from exc


def _connection_lost(cause: BaseException | None) -> bool:
    from pytoniq.liteclient.client import LiteClientError, LiteServerError

    if isinstance(cause, LiteServerError):
        return False
    return isinstance(cause, OSError | asyncio.IncompleteReadError | LiteClientError)


def _lite_client_class() -> Any:
    try:
        from pytoniq.liteclient.client import LiteClient
    except ImportError as exc:
        raise ConfigError(f"proof-checked chain reads need pytoniq; {INSTALL_HINT}") from exc
    return LiteClient


def _updater_died(lite: Any) -> bool:
    """pytoniq's block updater moves ``last_mc_block`` forward; once it died, every read would be stale."""
    updater = getattr(lite, "updater", None)
    return updater is not None and updater.done()


async def _close_quietly(lite: Any) -> None:
    try:
        await lite.close()
    except (OSError, RuntimeError) as exc:  # the connection is being dropped anyway
        log.debug("closing a liteserver connection failed error=%r", exc)


def _config_hash(mc_state_proof: Cell) -> bytes | None:
    # ShardStateUnsplit -> custom (McStateExtra, ref 3) -> config (ref 1 of McStateExtra): usually pruned here.
    try:
        return bytes(mc_state_proof[0][3][1].get_hash(0))
    except IndexError:
        return None


def _has_library_cells(cell: Cell) -> bool:
    stack, seen = [cell], set()
    while stack:
        current = stack.pop()
        if current.type_ == 2:
            return True
        for ref in current.refs:
            if ref.hash not in seen:
                seen.add(ref.hash)
                stack.append(ref)
    return False


def _address(address: Address | str) -> Address:
    return Address(address) if isinstance(address, str) else address


def _text(address: Address | str) -> str:
    return address if isinstance(address, str) else address_text(address)
