"""The proxy's routing room: who is connected, who should serve a request, and what each worker's jobs showed.

Nothing here knows about money (``cocoon.proxy.money``); the relay and the app bring the two together.
"""

from cocoon.proxy.routing.affinity import PrefixAffinity
from cocoon.proxy.routing.breaker import Breakers
from cocoon.proxy.routing.directory import Directory, Sender, SendFailed, WorkerEntry, WorkerLost
from cocoon.proxy.routing.evidence import EvidenceLog, outcome_of
from cocoon.proxy.routing.hedge import race
from cocoon.proxy.routing.liveness import Liveness
from cocoon.proxy.routing.rank import RoutingBook, ScoreParts, rank, score
from cocoon.proxy.routing.reputation import Outcome, ReputationBook
from cocoon.proxy.routing.views import directory_json, models_json

__all__ = [
    "Breakers",
    "Directory",
    "EvidenceLog",
    "Liveness",
    "Outcome",
    "PrefixAffinity",
    "ReputationBook",
    "RoutingBook",
    "ScoreParts",
    "SendFailed",
    "Sender",
    "WorkerEntry",
    "WorkerLost",
    "directory_json",
    "models_json",
    "outcome_of",
    "race",
    "rank",
    "score",
]
