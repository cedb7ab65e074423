"""A whole cocoon network on loopback, as real processes: what ``cocoon up``, the integration tests and
``bench/`` start. ``processes`` runs and stops the children, ``chain`` sets up a devnet with prices and funded
wallets, ``network`` (``LocalNetwork``) writes the role configs and ties it all together.
"""

from cocoon.local.chain import PRICE_CACHED, PRICE_COMPLETION, PRICE_PROMPT, LocalChain, start_local_chain
from cocoon.local.network import LocalNetwork
from cocoon.local.processes import UP_PORT_OFFSETS, Child, free_port, spawn, stop_all

__all__ = [
    "PRICE_CACHED",
    "PRICE_COMPLETION",
    "PRICE_PROMPT",
    "UP_PORT_OFFSETS",
    "Child",
    "LocalChain",
    "LocalNetwork",
    "free_port",
    "spawn",
    "start_local_chain",
    "stop_all",
]
