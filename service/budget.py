"""Budgets shared by all requests: body bytes held, pixels being decoded, images admitted.

Each is a counter with a ceiling, taken before the work starts and given back when it ends, so that what the
service holds at once is bounded whatever clients send, and a request that does not fit is told so at once
(503) instead of waiting. Decoding gives back from its own thread, hence the lock.
"""

import threading
from dataclasses import dataclass


class Budget:
    """``limit`` units, taken and given back in any amounts from any thread."""

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"budget {name!r} needs a positive limit, not {limit}")
        self.name = name
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def try_take(self, amount: int) -> bool:
        """Take ``amount`` if it fits under the limit now; False (and nothing taken) if not."""
        with self._lock:
            if self._used + amount > self.limit:
                return False
            self._used += amount
            return True

    def give_back(self, amount: int) -> None:
        with self._lock:
            assert amount <= self._used, f"{self.name}: giving back {amount} of {self._used}"
            self._used -= amount


class Lease:
    """What one request holds of a budget; ``close()`` gives all of it back (once)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.held = 0

    def try_take(self, amount: int) -> bool:
        if not self.budget.try_take(amount):
            return False
        self.held += amount
        return True

    def close(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget.give_back(held)


@dataclass(frozen=True)
class Budgets:
    body_bytes: Budget  # request bodies being read or held
    decode_pixels: Budget  # pixels of the bitmaps being decoded (or queued for a decode thread)
    images: Budget  # images admitted, from before their body is read until their request is answered
