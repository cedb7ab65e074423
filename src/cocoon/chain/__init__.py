"""TON money layer: the toncenter client, wallets, the registry and payment-channel contracts, vouchers.

The same code talks to the local devnet (``cocoon up``) and to TON testnet/mainnet.
"""

from cocoon.chain.channel import (
    ChannelConfig,
    ChannelRole,
    ChannelState,
    ClientChannel,
    PaymentChannel,
    WorkerChannel,
)
from cocoon.chain.contracts import TON, contract_code
from cocoon.chain.devnet import (
    DEFAULT_DEVNET_PORT,
    DevnetClient,
    DevnetProcess,
    DevnetStatus,
    bootstrap_devnet,
    devnet_command,
)
from cocoon.chain.node import ensure_devnet_installed, node_executable
from cocoon.chain.registry import (
    ModelEntry,
    ProxyEntry,
    Registry,
    RegistryParams,
    measurement_key,
    model_name_hash,
)
from cocoon.chain.toncenter import (
    AccountState,
    StackValue,
    ToncenterClient,
    Transaction,
)
from cocoon.chain.vouchers import sign_voucher, verify_voucher, voucher_cell, voucher_hash
from cocoon.chain.wallet import InternalTransfer, Wallet

__all__ = [
    "DEFAULT_DEVNET_PORT",
    "TON",
    "AccountState",
    "ChannelConfig",
    "ChannelRole",
    "ChannelState",
    "ClientChannel",
    "DevnetClient",
    "DevnetProcess",
    "DevnetStatus",
    "InternalTransfer",
    "ModelEntry",
    "PaymentChannel",
    "ProxyEntry",
    "Registry",
    "RegistryParams",
    "StackValue",
    "ToncenterClient",
    "Transaction",
    "Wallet",
    "WorkerChannel",
    "bootstrap_devnet",
    "contract_code",
    "devnet_command",
    "ensure_devnet_installed",
    "measurement_key",
    "model_name_hash",
    "node_executable",
    "sign_voucher",
    "verify_voucher",
    "voucher_cell",
    "voucher_hash",
]
