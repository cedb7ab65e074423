"""The proxy's money room: who may spend, what each receipt costs, the books, and settlement on chain.

The request path sees it only through the ``Cashier`` seam; nothing here knows about routing
(``cocoon.proxy.routing``): worker facts arrive as their wire ``Register``.
"""

from cocoon.proxy.money.cashier import FREE_PROXY, Cashier, FreeCashier, Reservation
from cocoon.proxy.money.mock import MockCashier, SeenReceipt
from cocoon.proxy.money.paid import PaidCashier, open_cashier
from cocoon.proxy.money.routes import ROUTES

__all__ = [
    "FREE_PROXY",
    "ROUTES",
    "Cashier",
    "FreeCashier",
    "MockCashier",
    "PaidCashier",
    "Reservation",
    "SeenReceipt",
    "open_cashier",
]
