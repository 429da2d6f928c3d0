"""Write-behind for computed caches and states: answers never wait for their own store write.

`schedule(user_ids, coro)` runs a write as a task and remembers it for each of its users;
`settled(user_id)` waits until that user's scheduled writes are done (call it before reading the
user: read-your-writes within one process, so a /recommend right after an /events sees the state
the event computed); `drain()` waits for everything (shutdown, before the store closes). A failed
write is the writer's to log and count; it never reaches a waiter here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable


class WriteBehind:
    def __init__(self) -> None:
        self._by_user: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, user_ids: Iterable[str], write: Awaitable) -> asyncio.Task:
        users = list(dict.fromkeys(user_ids))
        previous = {self._by_user[u] for u in users if u in self._by_user}
        task = asyncio.get_running_loop().create_task(self._after(previous, write))
        self._tasks.add(task)
        for user in users:
            self._by_user[user] = task
        task.add_done_callback(lambda t: self._done(t, users))
        return task

    @staticmethod
    async def _after(previous: set[asyncio.Task], write: Awaitable) -> None:
        # A user's writes land in the order they were scheduled (a later state never loses to an
        # earlier one racing it to Redis); the conditional writes would refuse it anyway.
        if previous:
            await asyncio.wait(previous)
        await write

    def _done(self, task: asyncio.Task, users: list[str]) -> None:
        self._tasks.discard(task)
        for user in users:
            if self._by_user.get(user) is task:
                del self._by_user[user]
        if not task.cancelled():
            task.exception()  # retrieved: a writer that raised has already logged it

    async def settled(self, user_id: str) -> None:
        task = self._by_user.get(user_id)
        if task is not None:
            await asyncio.wait([task])

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    @property
    def pending(self) -> int:
        return len(self._tasks)
