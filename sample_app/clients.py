"""Stand-ins for the shop's outside services (a carrier API, an exchange-rate API), blocking and async.

The latency is simulated so the demo needs no network; the blocking versions block the way
``requests`` does (the calling thread sleeps), the async one the way ``httpx.AsyncClient`` does.
"""

from __future__ import annotations

import asyncio
import time

CARRIER_LATENCY = 0.05
FX_LATENCY = 0.15  # longer than the collector's default stall threshold (0.1 s)
RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86, "JPY": 162.0, "CHF": 0.95}


def _quote(order_id: int) -> int:
    return 390 + (order_id * 37) % 900


def carrier_quote_blocking(order_id: int) -> int:
    time.sleep(CARRIER_LATENCY)
    return _quote(order_id)


async def carrier_quote(order_id: int) -> int:
    await asyncio.sleep(CARRIER_LATENCY)
    return _quote(order_id)


def exchange_rate_blocking(currency: str) -> float:
    time.sleep(FX_LATENCY)
    return RATES[currency]
