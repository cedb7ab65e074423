"""``cocoon chain status`` against a chain that is not a devnet: the devnet-only counter is left out, not an error."""

from __future__ import annotations

from cocoon.cli.chain import _devnet_transactions
from cocoon.local import free_port


async def test_a_chain_without_devnet_endpoints_has_no_transaction_count() -> None:
    assert await _devnet_transactions(f"http://127.0.0.1:{free_port()}") is None
