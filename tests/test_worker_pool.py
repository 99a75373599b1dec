"""spawn_pool: episode workers run their initializer and tasks, and die with the command that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# The command: a pool of two workers, one task that records the worker's pid and then outlives
# any test (60 s), and the parent waiting on it. The test kills the parent and watches the worker.
PARENT = textwrap.dedent(
    """
    import os, sys, time
    from energy_rerank.worker_pool import spawn_pool

    def init(tag):
        os.environ["POOL_TAG"] = tag

    def work(path):
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {os.environ['POOL_TAG']}")
        os.replace(path + ".tmp", path)
        time.sleep(60)

    def square(x):
        return x * x

    if __name__ == "__main__":
        with spawn_pool(2, initializer=init, initargs=("ready",), poll_seconds=0.2) as pool:
            assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]
            pool.submit(work, sys.argv[1]).result()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited: only its entry is left
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed(tmp_path):
    script, marker = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert parent.poll() is None, "the parent failed before its worker started"
            assert time.monotonic() < deadline, "the worker never ran"
            time.sleep(0.1)
        pid_text, tag = marker.read_text().split()
        worker = int(pid_text)
        assert tag == "ready", "the initializer ran in the worker before its task"
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)  # no handler, no cleanup: only the worker's own watch is left
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
