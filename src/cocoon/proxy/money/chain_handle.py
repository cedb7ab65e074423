"""The proxy's handle on the chain: toncenter client, its wallet (the proxy key), the registry, its params and prices,
and the chain's global id that every voucher it takes or signs names.

Worker payout channels are derived here (payer = the proxy's wallet), and every on-chain operation the
proxy sends is recorded, so ``/v1/books`` can show how few there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytoniq_core.boc.address import Address
from sqlalchemy import func, select

from cocoon.chain import Outbox, Registry, RegistryParams, ToncenterClient, Wallet, WorkerChannel
from cocoon.chain.address import raw_address
from cocoon.chain.liteserver import chain_for
from cocoon.chain.network import check_network
from cocoon.chain.pricing import PriceBook
from cocoon.config import ProxySettings
from cocoon.crypto import SigningKey
from cocoon.errors import ChainError, ConfigError
from cocoon.proxy.money.ledger import ChainOperation
from cocoon.proxy.store import Store


@dataclass(slots=True)
class ChainHandle:
    """Everything money reads from or sends to the chain, and the store it records operations in."""

    toncenter: ToncenterClient
    wallet: Wallet
    registry: Registry
    params: RegistryParams
    store: Store
    global_id: int  # config param 19 of the chain at chain_url: vouchers for any other chain are refused
    prices: PriceBook = field(init=False)  # the registry's prices, cached: one book per proxy
    _worker_channels: dict[tuple[str, int], str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.prices = PriceBook(self.registry)

    @classmethod
    async def connect(cls, settings: ProxySettings, key: SigningKey, store: Store) -> ChainHandle:
        """Open the chain named in ``settings``; ConfigError when the registry cannot be read."""
        assert settings.chain_url is not None
        if not settings.registry:
            raise ConfigError("chain_url is set but registry is not: give the registry contract's address")
        toncenter = chain_for(settings)
        registry = Registry(toncenter, Address(settings.registry))
        try:
            global_id = await check_network(toncenter, settings.network, env="COCOON_PROXY_NETWORK")
            params = await registry.get_params()
        except ChainError as exc:
            await toncenter.aclose()
            raise ConfigError(f"cannot read the registry {settings.registry} at {settings.chain_url}: {exc}") from exc
        except ConfigError:
            await toncenter.aclose()
            raise
        wallet = Wallet(key.seed, outbox=Outbox.beside(settings.data_dir / "proxy-key.json"))
        return cls(toncenter, wallet, registry, params, store, global_id)

    async def close(self) -> None:
        await self.toncenter.aclose()

    def worker_contract(self, payout: str) -> WorkerChannel:
        """The payout channel to ``payout`` (deployable: it carries its StateInit)."""
        return WorkerChannel.for_deploy(
            self.toncenter,
            payer=self.wallet.address,
            payee=Address(payout),
            payer_key=self.wallet.public_key,
            close_delay=self.params.close_delay,
        )

    def worker_channel(self, payout: str) -> str:
        """The raw address of ``payout``'s channel: computed once per payout and close delay (its StateInit
        hash cost more than the rest of booking a receipt)."""
        key = (payout, self.params.close_delay)
        found = self._worker_channels.get(key)
        if found is None:
            found = raw_address(self.worker_contract(payout).address)
            if len(self._worker_channels) >= 65_536:  # bounded: payout addresses come from workers
                self._worker_channels.clear()
            self._worker_channels[key] = found
        return found

    async def record(self, kind: str, channel: str, amount: int, *, ok: bool = True, detail: str = "") -> None:
        async with self.store.session() as session:
            session.add(ChainOperation(kind=kind, channel=channel, amount=amount, ok=int(ok), detail=detail))
            await session.commit()

    async def operations(self) -> int:
        """On-chain operations this proxy sent that the chain executed."""
        async with self.store.session() as session:
            count = await session.scalar(select(func.count()).where(ChainOperation.ok == 1))
        return int(count or 0)
