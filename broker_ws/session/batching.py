"""Database trips shared by everything that asks while one is under way.

A reconnect storm asks for thousands of identities and login seqs at once. One
trip to a database thread each (``database_sync_to_async``), with the event loop
and that thread trading the GIL at every query, was most of what the storm cost
(bench/storm.py). A :class:`Batcher` sends everything asked meanwhile on the
next trip instead, up to ``max_batch`` at a time. It adds no wait: a trip starts
as soon as the previous one ends (the first at once).

One batcher per event loop (:meth:`Batcher.of_this_loop`): the futures it hands
out belong to that loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from channels.db import database_sync_to_async

Item = TypeVar("Item")
Result = TypeVar("Result")

#: ``fn(items) -> results``: a result, or the exception that fails that item alone,
#: per item and in the same order. Runs in a database thread.
BatchFunction = Callable[[list[Item]], Sequence["Result | BaseException"]]


class Batcher(Generic[Item, Result]):
    """Runs ``fn`` over whatever was asked while its previous trip was under way."""

    def __init__(self, fn: BatchFunction[Item, Result], max_batch: int = 100) -> None:
        self._fn = fn
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Batcher[Item, Result]]
        self._loops = weakref.WeakKeyDictionary()

    def of_this_loop(self) -> Batcher[Item, Result]:
        """The batcher of the running event loop, with the same function."""
        loop = asyncio.get_running_loop()
        batcher = self._loops.get(loop)
        if batcher is None:
            batcher = self._loops[loop] = Batcher(self._fn, self._max_batch)
        return batcher

    async def run(self, item: Item) -> Result:
        """``fn``'s result for ``item`` (or its exception). Cancelling the caller
        cancels only its own wait; the trip goes on for the others."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if self._runner is None:
            self._runner = loop.create_task(self._trips())
        return await future

    async def _trips(self) -> None:
        try:
            while self._pending:
                batch = [entry for entry in self._pending[: self._max_batch] if not entry[1].done()]
                del self._pending[: self._max_batch]
                if batch:
                    await self._trip(batch)
        finally:
            self._runner = None

    async def _trip(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await database_sync_to_async(self._fn)([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # cancelled (the loop is closing): stop the trips
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller left meanwhile
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
