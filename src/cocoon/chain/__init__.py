"""TON money layer: the toncenter client, wallets, the registry and payment-channel contracts, vouchers.

The same code talks to the local devnet (``cocoon up``) and to TON testnet/mainnet; the devnet itself (its
Node.js server, process and endpoints) lives in ``cocoon.chain.devnet``.
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
from cocoon.chain.outbox import Outbox
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
from cocoon.chain.vouchers import (
    MAINNET_GLOBAL_ID,
    TESTNET_GLOBAL_ID,
    sign_voucher,
    verify_voucher,
    voucher_cell,
    voucher_hash,
)
from cocoon.chain.wallet import InternalTransfer, Sent, Wallet

__all__ = [
    "MAINNET_GLOBAL_ID",
    "TESTNET_GLOBAL_ID",
    "TON",
    "AccountState",
    "ChannelConfig",
    "ChannelRole",
    "ChannelState",
    "ClientChannel",
    "InternalTransfer",
    "ModelEntry",
    "Outbox",
    "PaymentChannel",
    "ProxyEntry",
    "Registry",
    "RegistryParams",
    "Sent",
    "StackValue",
    "ToncenterClient",
    "Transaction",
    "Wallet",
    "WorkerChannel",
    "contract_code",
    "measurement_key",
    "model_name_hash",
    "sign_voucher",
    "verify_voucher",
    "voucher_cell",
    "voucher_hash",
]
