"""The network explorer the proxy serves: pages (network, workers, money), their JSON at ``/v1/stats``, and the
per-minute time series of traffic and revenue the proxy keeps in its store for the charts.
"""

from cocoon.proxy.explorer.routes import ROUTES
from cocoon.proxy.explorer.timeline import Timeline

__all__ = ["ROUTES", "Timeline"]
