"""Write-behind for computed caches and states: answers never wait for their own store write.

`schedule(user_ids, write)` runs `write(on_sent)` (a coroutine function) as a task and remembers
it for each of its users; `settled(user_id)` waits until that user's scheduled writes can no
longer be overtaken (call it before reading the user: read-your-writes within one process, so a
/recommend right after an /events sees the state the event computed); `drain()` waits for
everything (shutdown, before the store closes). A failed write is the writer's to log and count;
it never reaches a waiter here.

"Can no longer be overtaken" depends on the store. Where every call goes down one connection in
call order (`ordered=True`: `Store.sends_in_order`), Redis runs a write before any command sent
after it, so a write counts as settled once it is *sent* (the writer calls `on_sent`): a user's
next request no longer waits a round trip for the previous write's reply, which under load was
the longest link in a busy user's chain of turns. Otherwise (a Cluster's pool of connections) it
counts once its reply is back. A write that ends without calling `on_sent` (refused by an open
breaker, failed) is settled when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

Write = Callable[[Callable[[], None]], Awaitable]


class _Pending:
    __slots__ = ("task", "sent")

    def __init__(self, sent: asyncio.Future):
        self.task: asyncio.Task | None = None
        self.sent = sent  # settled: done once the write is sent (ordered stores) or over


class WriteBehind:
    def __init__(self, ordered: bool = False) -> None:
        self.ordered = ordered
        self._by_user: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, user_ids: Iterable[str], write: Write) -> asyncio.Task:
        users = list(dict.fromkeys(user_ids))
        previous = {self._by_user[u] for u in users if u in self._by_user}
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future())
        pending.task = task = loop.create_task(self._after(previous, write, pending))
        self._tasks.add(task)
        for user in users:
            self._by_user[user] = pending
        task.add_done_callback(lambda t: self._done(pending, users))
        return task

    async def _after(self, previous: set[_Pending], write: Write, pending: _Pending) -> None:
        # A user's writes land in the order they were scheduled (a later state never loses to an
        # earlier one racing it to Redis); the conditional writes would refuse it anyway.
        if previous:
            await asyncio.wait([p.sent for p in previous])
        await write(lambda: self._mark_sent(pending) if self.ordered else None)

    @staticmethod
    def _mark_sent(pending: _Pending) -> None:
        if not pending.sent.done():
            pending.sent.set_result(None)

    def _done(self, pending: _Pending, users: list[str]) -> None:
        task = pending.task
        self._tasks.discard(task)
        self._mark_sent(pending)
        for user in users:
            if self._by_user.get(user) is pending:
                del self._by_user[user]
        if not task.cancelled():
            task.exception()  # retrieved: a writer that raised has already logged it

    async def settled(self, user_id: str) -> None:
        pending = self._by_user.get(user_id)
        if pending is not None:
            # asyncio.wait, not await: a cancelled caller must not cancel the shared future
            await asyncio.wait([pending.sent])

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    @property
    def pending(self) -> int:
        return len(self._tasks)
