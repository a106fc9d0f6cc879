"""bridged.ari.deadlines: the ARI requests' timeouts, one timer for all, with asyncio.timeout's semantics (a
request past its deadline is cancelled and told so; any other cancellation goes through untouched)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bridged.ari.deadlines import Deadlines

_tokens = itertools.count()


async def _request(deadlines: Deadlines, seconds: float, answer: asyncio.Future[str]) -> str:
    """A request as AriClient._call makes it: "timeout" when its deadline ended it."""
    token = next(_tokens)
    deadlines.start(token, seconds)
    try:
        try:
            return await answer
        finally:
            timed_out = deadlines.end(token)
    except asyncio.CancelledError:
        if not timed_out:
            raise
        return "timeout"


async def _unanswered(deadlines: Deadlines, seconds: float) -> asyncio.Task[str]:
    """A request Asterisk never answers, started."""
    task = asyncio.create_task(_request(deadlines, seconds, asyncio.get_running_loop().create_future()))
    await asyncio.sleep(0)
    return task


async def test_a_request_past_its_deadline_is_ended_and_others_are_not() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    stuck, quick, slow = loop.create_future(), loop.create_future(), loop.create_future()
    tasks = [
        asyncio.create_task(_request(deadlines, 0.05, stuck)),
        asyncio.create_task(_request(deadlines, 0.05, quick)),
        # a later deadline than the timer's: answered after the first timer fired, before its own deadline
        asyncio.create_task(_request(deadlines, 5.0, slow)),
    ]
    await asyncio.sleep(0)
    quick.set_result("quick")
    await asyncio.sleep(0.2)
    slow.set_result("slow")
    assert await asyncio.gather(*tasks) == ["timeout", "quick", "slow"]
    assert deadlines._due == {} and deadlines._expired == {}


async def test_a_shorter_timeout_started_later_ends_first() -> None:
    deadlines = Deadlines()
    long_wait = await _unanswered(deadlines, 30.0)
    short = await asyncio.wait_for(await _unanswered(deadlines, 0.05), 5)
    assert short == "timeout" and not long_wait.done()
    long_wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_wait


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines()
    task = await _unanswered(deadlines, 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines._due == {}


async def test_a_cancellation_from_elsewhere_at_the_deadline_still_cancels() -> None:
    """The task is cancelled by its deadline and, before it runs again, by its owner (a call's worker being
    stopped): the owner's cancellation must not be swallowed as a timeout (asyncio.timeout's rule)."""
    deadlines = Deadlines()
    task = await _unanswered(deadlines, 0.0)  # due at once
    deadlines._fire()  # the deadline, then the owner, in the same turn of the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_timeout_is_the_outer_ones() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _request(deadlines, 5.0, loop.create_future())
    assert deadlines._due == {}


async def test_a_deadline_inside_an_outer_timeout_is_the_requests() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        assert await _request(deadlines, 0.05, loop.create_future()) == "timeout"


async def test_each_stuck_request_is_ended_at_its_own_deadline() -> None:
    deadlines = Deadlines()
    first, second = await _unanswered(deadlines, 0.05), await _unanswered(deadlines, 0.15)
    assert await asyncio.wait_for(first, 5) == "timeout"
    assert not second.done()  # the timer that ended the first is armed again for the second
    assert await asyncio.wait_for(second, 5) == "timeout"
