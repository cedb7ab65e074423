"""Which TON network a role is on, and the check every role makes at start that its chain_url serves it.

A channel has the same address on every network and a wallet key opens the same wallet on each, so a role
pointed at the wrong endpoint would happily sign vouchers, deposit or claim on a network its operator never
meant. Each role names its network in its settings (``network = "testnet"``); at start it reads the
chain's global id (config param 19) and refuses to go on when the two disagree.
"""

from __future__ import annotations

from typing import Literal, get_args

from cocoon.chain.toncenter import ToncenterClient
from cocoon.chain.vouchers import MAINNET_GLOBAL_ID, TESTNET_GLOBAL_ID
from cocoon.errors import ConfigError

Network = Literal["devnet", "testnet", "mainnet"]
NETWORKS: tuple[Network, ...] = get_args(Network)
ChainReads = Literal["auto", "http", "liteserver"]  # auto: a liteserver on mainnet, HTTP elsewhere
# The local devnet's own id (set as its config param 19), so that nothing signed on it is valid on mainnet,
# whose config @ton/sandbox copies by default.
DEVNET_GLOBAL_ID = -662

GLOBAL_IDS: dict[Network, int] = {
    "mainnet": MAINNET_GLOBAL_ID,
    "testnet": TESTNET_GLOBAL_ID,
    "devnet": DEVNET_GLOBAL_ID,
}


def network_of(global_id: int) -> Network | None:
    """The network with ``global_id``, or None for one cocoon does not know."""
    return next((name for name, known in GLOBAL_IDS.items() if known == global_id), None)


async def check_network(
    client: ToncenterClient, network: Network, *, env: str | None = None, option: str | None = None
) -> int:
    """The chain's global id, after checking it is ``network``'s; ConfigError naming both when not.

    ``env`` is the environment variable that sets the caller's ``network`` (``COCOON_PROXY_NETWORK``) and
    ``option`` the command-line option (``--network``) if it has one, for the message.
    """
    expected = GLOBAL_IDS[network]
    actual = await client.global_id()
    if actual != expected:
        found = network_of(actual)
        served = f"{found} (global id {actual})" if found else f"an unknown network (global id {actual})"
        if found is None:
            fix = f"point chain_url at a {network} endpoint"
        else:
            fix = f"pass {option} {found}" if option else f'set network = "{found}" in the config'
            fix += f" (or {env}={found})" if env else ""
        raise ConfigError(
            f"{client.base_url} serves {served}, but this role is configured for {network} (global id {expected}); "
            f"{fix} if that is the network you mean"
        )
    return actual
