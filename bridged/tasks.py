"""Background tasks that are kept until they finish and whose failures are logged.

asyncio keeps only a weak reference to a task: one nobody holds can vanish mid-way, and its exception
is reported (if at all) when it is collected. A :class:`Tasks` group holds its tasks until they are
done, logs an exception the moment a task ends with one, and lets its owner cancel or await them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed: %s", task.get_name(), type(exc).__name__, exc_info=exc)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Until every task has finished (cancelled or not); what they raise was logged already."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
