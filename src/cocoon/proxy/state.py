"""Everything one proxy holds in memory, built from its settings: keys, the directory, routing's books, the
store and the cashier. The app keeps it at ``app.state.proxy``; handlers read it from there.
"""

from __future__ import annotations

from cocoon.attestation import AttestationVerifier
from cocoon.attestation.registry_policy import RegistryPolicy
from cocoon.config import ProxySettings
from cocoon.crypto import load_or_create_signing_key, node_id_for
from cocoon.proxy.money.cashier import Cashier, FreeCashier
from cocoon.proxy.replays import Replays
from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.canary import CanaryBook, CanaryPolicy
from cocoon.proxy.routing.directory import Directory
from cocoon.proxy.routing.evidence import EvidenceLog
from cocoon.proxy.routing.liveness import Liveness
from cocoon.proxy.routing.rank import RoutingBook
from cocoon.proxy.routing.reputation import ReputationBook
from cocoon.proxy.store import Store, default_url


class ProxyState:
    """One per proxy process. ``cashier`` is a ``FreeCashier`` until start-up opens the one the settings ask for."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.key = load_or_create_signing_key(settings.data_dir / "proxy-key.json")
        self.proxy_id = "p-" + node_id_for(self.key.public)[2:]
        self.directory = Directory()
        self.verifier = AttestationVerifier(settings.policy)
        self.store = Store(settings.store_url or default_url(settings.data_dir))
        canaries = CanaryBook(
            CanaryPolicy(
                rate=settings.canary_rate, min_interval_s=settings.canary_min_interval_s, window=settings.canary_window
            )
        )
        self.routing = RoutingBook(
            ReputationBook(settings.reputation_half_life_s), Breakers(), PrefixAffinity(), canaries
        )
        self.evidence = EvidenceLog(self.routing)
        self.liveness = Liveness(self.directory, settings.heartbeat_timeout)
        self.cashier: Cashier = FreeCashier()
        self.seen_requests = Replays(self.store)  # request ids relayed lately (by any replica): replays are refused
        self.policy_source: RegistryPolicy | None = None  # set at start when the policy comes from the registry
