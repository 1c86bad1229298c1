"""A blocking callable run in a daemon thread of its own, and awaited.

``asyncio.to_thread`` runs its callable in the loop's default executor, whose threads
``asyncio.run`` waits for as it returns and the interpreter joins as it exits: a process told
to stop while a user's callback trains for minutes would wait for the training to end. A daemon
thread is waited for by neither. Cancelling the await abandons the thread: it runs on, its
result is dropped, and the process's exit does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["in_daemon_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a new daemon thread (in a copy of the caller's context, as
    ``asyncio.to_thread`` does): its result, or what it raised."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def succeed(result: T) -> None:
        if not done.done():  # else the await was cancelled: nobody wants the result any more
            done.set_result(result)

    def fail(error: BaseException) -> None:
        if not done.done():
            done.set_exception(error)

    def work() -> None:
        outcome: Callable[[], None]
        try:
            result = context.run(fn, *args, **kwargs)
        except StopIteration as exc:  # a future cannot carry it
            error = RuntimeError(f"{_name(fn)} raised StopIteration")
            error.__cause__ = exc
            outcome = functools.partial(fail, error)
        except BaseException as exc:
            outcome = functools.partial(fail, exc)
        else:
            outcome = functools.partial(succeed, result)
        # A loop closed meanwhile (the process is stopping) has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=work, name=f"secagg-{_name(fn)}", daemon=True).start()
    return await done


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
