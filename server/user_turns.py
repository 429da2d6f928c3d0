"""One stateful request at a time per user, in arrival order, within this process.

Why: a user's next event used to start while the previous one was still computing. It then saw
two new items on a cache the compiled append graph extends one item at a time (the eager path),
and its cache write, computed against the same stored cache, was refused once the first write
landed (superseded), so the event after it found the near cache stale and read and decoded the
whole K/V from Redis. Under load that cascade fed itself (in a full load test before this
change: p99 of 60-100 ms at 640-800 req/s, hundreds of superseded writes per step; none after).
Taking turns, the second event waits for the first to finish computing (its write is then
scheduled, and `WriteBehind.settled` waits for it), and extends a current cache by one item.

Contract: `async with turns.turn(user_id):` runs the body after every earlier turn of that user
has finished (normally, with an error, or cancelled); turns of different users never wait for
each other; a cancelled waiter keeps its place, so the turns after it still wait for the ones
before it. Correctness never depends on this (every store write is conditional): it is about
doing the cheap thing instead of the expensive one. Other processes are not coordinated.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager


class UserTurns:
    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future] = {}  # the latest turn of each user with one open

    @asynccontextmanager
    async def turn(self, user_id: str):
        before = self._last.get(user_id)
        mine = asyncio.get_running_loop().create_future()
        self._last[user_id] = mine
        try:
            if before is not None and not before.done():
                await asyncio.shield(before)
            yield
        finally:
            if before is None or before.done():
                self._finish(user_id, mine)
            else:  # cancelled while waiting: done only when the turn before it is
                before.add_done_callback(lambda _: self._finish(user_id, mine))

    def _finish(self, user_id: str, mine: asyncio.Future) -> None:
        mine.set_result(None)
        if self._last.get(user_id) is mine:
            del self._last[user_id]

    def busy(self, user_id: str) -> bool:
        """Whether a turn of this user is running or waiting."""
        return user_id in self._last

    @property
    def open(self) -> int:
        """Users with a turn running or waiting."""
        return len(self._last)
