"""``cocoon chain status``: the registry's prices and the proxy's channels as the chain sees them; the owner's
commands (``cocoon chain wallet``, ``cocoon chain registry ...``) are in ``registry``."""

from __future__ import annotations

from typing import Any

import httpx
from pytoniq_core.boc.address import Address

from cocoon.chain import ClientChannel, Registry, WorkerChannel
from cocoon.chain.devnet import DevnetClient
from cocoon.chain.liteserver import open_chain
from cocoon.chain.network import check_network
from cocoon.cli.common import (
    JsonOpt,
    OperatorKeyOpt,
    ProxyUrlOpt,
    operator_headers,
    print_report,
    proxy_json,
    role_group,
    run_with_spinner,
)
from cocoon.cli.registry import (
    DEFAULT_CHAIN_URL,
    ApiKeyOpt,
    ChainUrlOpt,
    LiteserverOpt,
    NetworkOpt,
    policy,
    registry_app,
    wallet,
)
from cocoon.errors import ChainError

chain_app = role_group("The chain: the owner wallet, the registry, and the proxy's channels as the chain sees them.")
chain_app.command("wallet")(wallet)
chain_app.command("policy")(policy)
chain_app.add_typer(registry_app, name="registry")


@chain_app.command("status")
def chain_status(
    chain_url: ChainUrlOpt = DEFAULT_CHAIN_URL,
    network: NetworkOpt = "devnet",
    api_key: ApiKeyOpt = None,
    liteserver_config: LiteserverOpt = None,
    proxy_url: ProxyUrlOpt = "http://127.0.0.1:8700",
    operator_key: OperatorKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The registry's prices and every channel the proxy keeps, as the chain sees them (the proxy's books are
    for its operators: run it on the proxy's host, or pass --operator-key)."""

    async def work() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            terms = await proxy_json(http, "GET", f"{proxy_url}/v1/payment")
            books = await proxy_json(http, "GET", f"{proxy_url}/v1/books", headers=operator_headers(operator_key))
        out: dict[str, Any] = {"registry": terms["registry"], "proxy_wallet": terms["proxy_wallet"]}
        async with open_chain(chain_url, api_key, network=network, liteserver_config=liteserver_config) as chain:
            await check_network(chain, network, env="COCOON_NETWORK", option="--network")
            registry = Registry(chain, Address(terms["registry"]))
            out["models"] = [
                {"model": m.name, "prompt": m.price_prompt, "cached": m.price_cached, "completion": m.price_completion}
                for m in await registry.get_models()
            ]
            out["proxy_wallet_balance"] = await chain.get_balance(Address(terms["proxy_wallet"]))
            channels = []
            for kind, rows, cls in (
                ("client", books["clients"], ClientChannel),
                ("worker", books["workers"], WorkerChannel),
            ):
                for row in rows:
                    address = Address(row["channel"])
                    if (await chain.get_address_information(address)).active:
                        state = await cls(chain, address).get_channel()
                        channels.append(
                            {
                                "kind": kind,
                                "channel": row["channel"],
                                "deposit": state.deposit,
                                "claimed": state.claimed,
                            }
                        )
            out["channels"] = channels
        transactions = await _devnet_transactions(chain_url)
        if transactions is not None:
            out["transactions"] = transactions
        out["onchain_operations"] = books["onchain_operations"]
        return out

    print_report(run_with_spinner("reading the chain", work, peer=f"the proxy at {proxy_url}"), as_json, "chain")


async def _devnet_transactions(chain_url: str) -> int | None:
    """How many transactions the devnet at ``chain_url`` has run; None when it is no devnet (toncenter has no
    such counter)."""
    try:
        async with DevnetClient(chain_url) as devnet:
            return (await devnet.status()).transactions
    except ChainError:
        return None
