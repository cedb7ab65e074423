"""The local devnet: a Node.js @ton/sandbox chain (``server.js``, shipped beside this package) serving the
toncenter v2 API on loopback, plus its devnet-only endpoints. ``nodejs`` finds Node and installs the server once,
``process`` runs it, ``client`` talks to it and bootstraps the registry on it.
"""

from cocoon.chain.devnet.client import (
    DevnetClient,
    DevnetStatus,
    ToncenterCounters,
    ToncenterMode,
    bootstrap_devnet,
)
from cocoon.chain.devnet.nodejs import ensure_devnet_installed, node_executable
from cocoon.chain.devnet.process import DEFAULT_DEVNET_PORT, DevnetOptions, DevnetProcess, devnet_command

__all__ = [
    "DEFAULT_DEVNET_PORT",
    "DevnetClient",
    "DevnetOptions",
    "DevnetProcess",
    "DevnetStatus",
    "ToncenterCounters",
    "ToncenterMode",
    "bootstrap_devnet",
    "devnet_command",
    "ensure_devnet_installed",
    "node_executable",
]
