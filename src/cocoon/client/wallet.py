"""The client's money: its wallet key, its ClientChannel with each proxy it uses, and the vouchers it signs.

``ChannelPayer`` pays only receipts ``stream.py`` verified; a receipt that did not verify is rejected, never paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from pytoniq_core.boc.address import Address

from cocoon.chain import ClientChannel, Outbox, Registry, ToncenterClient, Wallet, sign_voucher, verify_voucher
from cocoon.chain.address import raw_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.network import Network, check_network
from cocoon.chain.pricing import Cost, PriceBook, Prices, cost_of
from cocoon.config import ClientSettings
from cocoon.crypto import SigningKey, load_or_create_signing_key
from cocoon.errors import CocoonError, ConfigError, UpstreamFailed
from cocoon.metrics import record_money
from cocoon.protocol import Receipt
from cocoon.protocol.http_client import CoalescingTransport, LeanClient
from cocoon.protocol.money import PayerAuth, channel_auth_header, payer_message, rejection_message
from cocoon.protocol.tls import trust_context

DEFAULT_MAX_COEFFICIENT = 4000  # COCOON's default: a client pays at most 4x the registry price
OPEN_REQUEST_S = 600.0  # a request signed this long ago is no longer in flight, whatever became of it
RESYNC_MIN_AGE_S = 10.0  # the proxy's default unpaid_grace_s: younger receipts may still be on their way
PAYER_HTTP_TIMEOUT_S = 30.0  # a payer's requests to its proxy (vouchers, channel reads)
NETWORK_ENV = "COCOON_CLIENT_NETWORK"  # sets the client's `network`, named in the mismatch message


@dataclass(frozen=True, slots=True)
class PaymentTerms:
    """What a paid proxy publishes at ``GET /v1/payment``."""

    proxy_wallet: Address
    registry: Address
    global_id: int  # the chain the proxy bills on (config param 19): what every voucher names
    proxy_fee_bps: int
    close_delay: int
    min_client_deposit: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PaymentTerms:
        if body.get("global_id") is None:
            raise UpstreamFailed(
                "the proxy's payment terms do not say which chain it bills on (global_id); "
                "it is older than this client: upgrade the proxy"
            )
        return cls(
            Address(body["proxy_wallet"]),
            Address(body["registry"]),
            int(body["global_id"]),
            int(body["proxy_fee_bps"]),
            int(body["close_delay"]),
            int(body["min_client_deposit"]),
        )


async def payment_terms(http: httpx.AsyncClient) -> PaymentTerms | None:
    """The proxy's payment terms; ``None`` when it is a free proxy."""
    response = await http.get("/v1/payment")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise CocoonError.from_openai(response.status_code, _json(response))
    return PaymentTerms.from_json(response.json())


async def check_same_chain(toncenter: ToncenterClient, terms: PaymentTerms, network: Network) -> int:
    """The chain's global id, once it is sure ``toncenter`` serves the client's ``network`` and the proxy bills
    on that chain; ConfigError if not.

    A channel has the same address on every chain, so a client paying a proxy on another chain would sign
    vouchers the proxy cannot claim (or pay on a chain it never meant to): it stops before signing any.
    """
    own = await check_network(toncenter, network, env=NETWORK_ENV)
    if terms.global_id != own:
        raise ConfigError(
            f"the proxy bills on the chain with global id {terms.global_id} but this client's chain_url "
            f"{toncenter.base_url} is the chain with global id {own} (mainnet -239, testnet -3): point "
            "chain_url at the proxy's chain, or use a proxy on yours"
        )
    return own


def client_channel(toncenter: ToncenterClient, wallet: Wallet, terms: PaymentTerms) -> ClientChannel:
    """The client's channel with this proxy (its address follows from the two wallets and the close delay)."""
    return ClientChannel.for_deploy(
        toncenter,
        payer=wallet.address,
        payee=terms.proxy_wallet,
        payer_key=wallet.public_key,
        close_delay=terms.close_delay,
    )


@dataclass(slots=True)
class _Due:
    """Receipts one ``pay`` call hands over, what they cost, the proxy (replica) that served them, and when the
    voucher paying them was taken."""

    receipt_ids: list[str]
    cost: int
    via: httpx.AsyncClient
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(slots=True)
class ChannelBook:
    """What the client keeps of one channel: its last cumulative voucher, the receipts waiting for the next, and
    the requests signed for it that are still in flight.

    Vouchers are cumulative, so a channel must have one book: replicas of one proxy (several URLs, one wallet
    and one registry entry, so one channel) each have a payer, and those payers share the channel's book
    (``ChannelPayer(books=...)``). With a book each, the second replica's payer would sign from a cumulative
    the first one's vouchers had passed, and the proxy would refuse every voucher after the first of each.
    """

    vouchered: int = 0
    due: list[_Due] = field(default_factory=list)  # receipts waiting for the next voucher
    paying: asyncio.Task[None] | None = None
    unsure: bool = False  # a voucher was sent and no answer said whether the proxy took it
    open: dict[str, float] = field(default_factory=dict)  # request id -> time.monotonic() it was signed for


def _settle(due: _Due, error: BaseException | None) -> None:
    if due.done.done():
        return
    if error is None:
        due.done.set_result(None)
    else:
        due.done.set_exception(error)


class ChannelPayer:
    """Pays one proxy through the client's channel with it; safe to share between concurrent requests. A client
    of several proxies has one payer per proxy (``ProxyConnection.payer``), all signing with the same key;
    payers given one ``books`` dict share a ``ChannelBook`` per channel, so replicas of one proxy listed as
    separate URLs pay one cumulative voucher sequence (each voucher posted to the replica that served it).

    The SDK calls ``auth`` to name the paying channel in each request, ``pay`` with the receipts a request's
    ``ResponseStream`` verified (``StreamResult.receipts``, or ``ResponseStream.verified`` when it failed
    after some), and ``reject`` with each receipt it refused. Nothing else is ever paid.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        toncenter: ToncenterClient,
        key: SigningKey,
        *,
        max_coefficient: int = DEFAULT_MAX_COEFFICIENT,
        outbox: Outbox | None = None,
        network: Network = "devnet",
        books: dict[str, ChannelBook] | None = None,
    ) -> None:
        self.http = http
        self.toncenter = toncenter
        self.key = key
        self.wallet = Wallet(key.seed, outbox=outbox)
        self.network: Network = network
        self.max_coefficient = max_coefficient
        self.channel = ""
        self.global_id: int | None = None  # the chain's, once _start() checked the proxy bills on it
        self.enabled = True
        self._prices: PriceBook | None = None
        self._ready = False
        self._lock = asyncio.Lock()
        self._books = books if books is not None else {}
        self.book = ChannelBook()  # this channel's, shared with other replicas' payers once ``_start`` knows it
        self.resync_min_age_s = RESYNC_MIN_AGE_S

    async def aclose(self) -> None:
        """Close this payer's HTTP and chain clients, once a voucher on its way has had its time (what is still
        owed stays owed: the next resync of this channel pays or rejects it)."""
        paying = self.book.paying
        if paying is not None and not paying.done():
            with contextlib.suppress(Exception):  # its own caller sees how it ended
                await asyncio.wait_for(asyncio.shield(paying), PAYER_HTTP_TIMEOUT_S)
        await self.http.aclose()
        await self.toncenter.aclose()

    async def _start(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            terms = await payment_terms(self.http)
            if terms is None:
                self.enabled = False
            else:
                self.global_id = await check_same_chain(self.toncenter, terms, self.network)
                self.channel = raw_address(client_channel(self.toncenter, self.wallet, terms).address)
                self._prices = PriceBook(Registry(self.toncenter, terms.registry))
                shared = self._books.get(self.channel)
                if shared is None:  # the first payer of this channel reads where its vouchers stand
                    self.book.vouchered = await self._last_voucher(self.http)
                    shared = self._books.setdefault(self.channel, self.book)
                self.book = shared
            self._ready = True
        await self.resync()  # what an earlier run of this client left owed

    @property
    def vouchered(self) -> int:
        """The channel's last cumulative voucher the proxy took."""
        return self.book.vouchered

    async def _last_voucher(self, http: httpx.AsyncClient) -> int:
        """Resume from the proxy's copy of our last voucher, trusted only if our own key signed it."""
        response = await http.get(f"/v1/channels/{self.channel}", headers=self._read_auth())
        if response.status_code == 404:
            return 0
        if response.status_code != 200:
            raise CocoonError.from_openai(response.status_code, _json(response))
        body = response.json()
        cumulative = int(body.get("vouchered", 0))
        assert self.global_id is not None, "the chain is checked before the channel is read"
        signature = bytes.fromhex(body.get("signature", ""))
        if cumulative and not verify_voucher(
            self.wallet.public_key, self.channel, cumulative, signature, global_id=self.global_id
        ):
            raise UpstreamFailed(f"the proxy reports a voucher for channel {self.channel} this client never signed")
        return cumulative

    async def auth(self, request_id: str) -> PayerAuth | None:
        """The request's payer field, or ``None`` for a free proxy."""
        await self._start()
        if not self.enabled:
            return None
        now, open_ = time.monotonic(), self.book.open
        for done in [rid for rid, at in open_.items() if now - at > OPEN_REQUEST_S]:
            del open_[done]
        open_[request_id] = now
        return PayerAuth(channel=self.channel, signature=self.key.sign(payer_message(self.channel, request_id)))

    def finished(self, request_id: str) -> None:
        """The request ended without a receipt to pay (it failed): nothing here waits on what the proxy holds."""
        self.book.open.pop(request_id, None)

    async def resync(self) -> int:
        """Settle receipts the proxy says this channel owes but no request here is waiting on; returns how many.

        A proxy that crashed after committing a charge and before delivering its receipt holds a receipt the
        client never got (nor its completion): the client never pays for it, it rejects it, so the channel is
        not refused (402) for it forever. Receipts younger than ``resync_min_age_s`` are left alone: they may
        still be on their way to a request in flight in another process sharing this wallet.
        """
        if not self.enabled or not self.channel:
            return 0
        response = await self.http.get(f"/v1/channels/{self.channel}/owed", headers=self._read_auth())
        if response.status_code == 404:
            return 0
        if response.status_code != 200:
            raise CocoonError.from_openai(response.status_code, _json(response))
        settled = 0
        for owed in response.json().get("owed", []):
            if str(owed.get("request_id")) in self.book.open or float(owed.get("age_s", 0)) < self.resync_min_age_s:
                continue
            await self.reject(str(owed["receipt_id"]), "the client never received this receipt or its completion")
            settled += 1
        return settled

    def _read_auth(self) -> dict[str, str]:
        return channel_auth_header(self.key.public, self.key.sign, self.channel)

    async def prices(self, model: str) -> Prices:
        """Registry prices, read from the chain itself (not from the proxy)."""
        assert self._prices is not None, "prices are read after _start()"
        return await self._prices.prices(model)

    async def pay(self, verified: Sequence[Receipt], coefficients: Mapping[str, int]) -> Cost | None:
        """Sign and hand over the next cumulative voucher, covering exactly the ``verified`` receipts.

        ``verified`` holds only receipts ``stream.py`` checked against the attested worker and this exchange;
        ``coefficients`` maps each one's worker to its price coefficient. Returns what they cost (``None`` on
        a free proxy); prices come from the chain's registry, not from the proxy.
        """
        await self._start()
        if not self.enabled:
            return None
        for r in verified:
            self.book.open.pop(r.request_id, None)
        priced = [r for r in verified if coefficients[r.worker_id] <= self.max_coefficient]
        for r in verified:
            if coefficients[r.worker_id] > self.max_coefficient:
                await self.reject(
                    r.receipt_id,
                    f"price coefficient {coefficients[r.worker_id]} is above this client's max_coefficient "
                    f"{self.max_coefficient}",
                )
        verified = priced
        cost = Cost()
        for r in verified:
            prices = await self.prices(r.model)
            cost += cost_of(r.prompt_tokens, r.cached_tokens, r.completion_tokens, prices, coefficients[r.worker_id])
        if verified:
            await self._hand_over(_Due([r.receipt_id for r in verified], cost.total, self.http))
        record_money("client", "paid", cost.total)
        return cost

    async def _hand_over(self, due: _Due) -> None:
        """Pay ``due`` in the next voucher. Vouchers are cumulative, so they go one at a time; receipts that
        arrive while one is on its way wait and share the next (a group payment: one signature, one POST and
        one of the proxy's commits for all of them, instead of a queue of single vouchers)."""
        book = self.book
        book.due.append(due)
        if book.paying is None or book.paying.done():
            book.paying = asyncio.create_task(self._pay_due(book))
        await asyncio.shield(due.done)  # an app hanging up does not stop a payment already signed

    async def _pay_due(self, book: ChannelBook) -> None:
        while book.due:
            batch, book.due = book.due, []
            try:
                await self._submit(book, batch)
            except Exception as exc:  # each caller hears why
                if len(batch) == 1:
                    _settle(batch[0], exc)
                    continue
                # One bad receipt refuses the whole voucher: pay each alone, so it fails only its own request.
                for due in batch:
                    try:
                        await self._submit(book, [due])
                    except Exception as alone:
                        _settle(due, alone)
                    else:
                        _settle(due, None)
                continue
            for due in batch:
                _settle(due, None)

    async def _submit(self, book: ChannelBook, batch: Sequence[_Due]) -> None:
        """One voucher for ``batch``, posted to the replica that served its first receipts (alive a moment ago;
        replicas share the books, so any of them may take it)."""
        assert self.global_id is not None, "the chain is checked in _start()"
        http = batch[0].via
        if book.unsure:
            # The last voucher failed, perhaps after the proxy took it (a proxy killed between its commit and
            # its answer): go on from the proxy's copy, trusted only with our own signature, not from ours.
            book.vouchered = await self._last_voucher(http)
            book.unsure = False
        cumulative = book.vouchered + sum(d.cost for d in batch)
        signature = sign_voucher(self.key, self.channel, cumulative, global_id=self.global_id)
        body = {
            "channel": self.channel,
            "cumulative": cumulative,
            "signature": signature.hex(),
            "receipt_ids": [i for d in batch for i in d.receipt_ids],
        }
        book.unsure = True  # until an answer comes: without one, the proxy may have taken it
        try:
            response = await http.post("/v1/vouchers", json=body)
        except httpx.TransportError:
            # No answer: the proxy may have committed it and died (or the answer was lost). Ask it once: paid
            # receipts reported as failed would have the app retry, and pay, the same work twice.
            if not await self._taken(http, cumulative):
                raise
            response = httpx.Response(200)
        book.unsure = False
        if response.status_code != 200:  # the proxy answered: it refused this voucher
            raise CocoonError.from_openai(response.status_code, _json(response))
        book.vouchered = cumulative

    async def _taken(self, http: httpx.AsyncClient, cumulative: int) -> bool:
        """Whether the proxy's copy of the channel's last voucher is ours for ``cumulative`` (signed by our key,
        which ``_last_voucher`` checks); False when it cannot say."""
        try:
            return await self._last_voucher(http) == cumulative
        except (httpx.TransportError, CocoonError):
            return False

    async def reject(self, receipt_id: str, reason: str) -> None:
        """Tell the proxy this receipt did not verify: it is never paid. A receipt it never charged is fine."""
        await self._start()
        if not self.enabled:
            return
        signature = self.key.sign(rejection_message(self.channel, receipt_id)).hex()
        body = {"channel": self.channel, "receipt_id": receipt_id, "reason": reason[:500], "signature": signature}
        response = await self.http.post("/v1/vouchers/reject", json=body)
        if response.status_code not in (200, 404):
            raise CocoonError.from_openai(response.status_code, _json(response))


def sidecar_payer(
    settings: ClientSettings, proxy_url: str | None = None, books: dict[str, ChannelBook] | None = None
) -> ChannelPayer:
    """The sidecar's payer of the proxy at ``proxy_url`` (default: ``proxy_url`` of the settings): its wallet key
    from ``wallet_file``, prices from ``chain_url``. A client pays each proxy through its own channel with it;
    the payers of one client share ``books``, so replicas of one proxy share their channel's (``ChannelBook``)."""
    assert settings.chain_url is not None
    http = LeanClient(
        base_url=proxy_url or settings.proxy_url,
        timeout=httpx.Timeout(PAYER_HTTP_TIMEOUT_S, connect=5.0),
        transport=CoalescingTransport(verify=trust_context(settings.tls_ca_file)),
    )
    toncenter = chain_for(settings)
    key = load_or_create_signing_key(settings.wallet_file)
    outbox = Outbox.beside(settings.wallet_file)  # shared with `cocoon client deposit`, which locks it too
    return ChannelPayer(
        http,
        toncenter,
        key,
        max_coefficient=settings.max_coefficient,
        outbox=outbox,
        network=settings.network,
        books=books,
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}
