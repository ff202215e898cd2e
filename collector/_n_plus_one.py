"""The N+1 statements this process has seen: per (route, fingerprint), bounded, the least recent evicted.

``collector._sql`` records a row only when a request reached the N+1 threshold, so a request without
an N+1 pays nothing here. The profile endpoint's listing serves the rows (behind the profile token:
fingerprints are the app's SQL). Each process keeps its own, as it keeps its profiles: under gunicorn
a listing shows the N+1 statements of the worker that answered. The table is cleared with the
statement hooks (``_sql``'s ledger component), so uninstrumenting the last app leaves it empty.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_ENTRIES = 100
FINGERPRINT_CHARS = 2000  # a fingerprint is unbounded SQL text; the table's memory is not


@dataclass
class Entry:
    route: str
    fingerprint: str
    requests: int  # requests that repeated it N+1 times
    max_repeats: int  # the most times one request ran it
    location: str  # where the loop was, in the latest such request
    last_seen: float  # wall-clock seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "fingerprint": self.fingerprint,
            "requests": self.requests,
            "max_repeats": self.max_repeats,
            "location": self.location,
            "last_seen": datetime.fromtimestamp(self.last_seen, UTC).isoformat(timespec="seconds"),
        }


_entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()  # least recently seen first
_lock = threading.Lock()  # sync routes finish in the thread pool's threads


def record(route: str, fingerprint: str, repeats: int, location: str) -> None:
    """One request on ``route`` ran ``fingerprint`` ``repeats`` times, its loop at ``location``."""
    fingerprint = fingerprint[:FINGERPRINT_CHARS]
    key = (route, fingerprint)
    now = time.time()
    with _lock:
        entry = _entries.get(key)
        if entry is None:
            if len(_entries) >= MAX_ENTRIES:
                _entries.popitem(last=False)
            _entries[key] = Entry(route, fingerprint, 1, repeats, location, now)
            return
        _entries.move_to_end(key)
        entry.requests += 1
        entry.max_repeats = max(entry.max_repeats, repeats)
        entry.location = location
        entry.last_seen = now


def entries() -> list[dict[str, Any]]:
    """The rows, the most requests first (then the most recently seen)."""
    with _lock:
        rows = [(e.requests, e.last_seen, e.as_dict()) for e in _entries.values()]
    rows.sort(key=lambda row: (-row[0], -row[1]))
    return [row[2] for row in rows]


def clear() -> None:
    with _lock:
        _entries.clear()
