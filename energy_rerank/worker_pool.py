"""Worker processes that never outlive the command that started them.

`eval libero --workers K` and `libero collect --workers K` run whole tasks in spawned processes
(spawned, not forked: a forked gRPC channel is unusable). When the command itself is killed
(SIGTERM from a scheduler or `kill`, SIGKILL), nothing tells its pool's workers: they are
re-parented and go on running episodes against a server that is gone, holding the CPU for hours.
So every worker watches its parent and exits as soon as the parent is no longer there.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PARENT_POLL_SECONDS = 1.0  # how often a worker checks that its parent still runs


def _watch_parent(parent: int, every: float) -> None:
    while os.getppid() == parent:  # a dead parent's children are re-parented: the id changes
        time.sleep(every)
    os._exit(1)  # no cleanup to wait for: the parent that would collect the results is gone


def _start(parent: int, every: float, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    threading.Thread(target=_watch_parent, args=(parent, every), daemon=True, name="parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    poll_seconds: float = PARENT_POLL_SECONDS,
) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of `workers` spawned processes, each running initializer(*initargs)
    once, that exit within poll_seconds of this process's death."""
    import multiprocessing

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(os.getpid(), poll_seconds, initializer, initargs),
    )
