"""Helpers for testing a real server: tiny random-weight bundles and a server in a subprocess.

Used by tests/test_server_*.py, tests/test_reliability_*.py and tests/test_security_*.py:
`ServerProcess` runs the real `energy-rerank serve` command on a free loopback port and reads
back where it listens and where its metrics are; `InProcessServer` runs the same server on a
background event loop, for tests that inject faults into its models or need thousands of calls.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.normalize import NormStats
from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.reranker import Reranker
from energy_rerank.server.config import DEFAULT_ENERGY, DEFAULT_POLICY, ServerConfig

if TYPE_CHECKING:  # imported where a server is built: the bundle helpers need no grpc extras
    from energy_rerank.server.app import RerankServer

TINY_CAMERA = "agentview"
TINY_LOWDIM = 25  # the synthetic task's low-dim state with 3 targets (7 proprio + 3 x 6 poses)
LIBERO_CAMERAS = ("agentview", "eye_in_hand")  # the cameras rollouts/windows.py names LIBERO's images


def embedded_default_present() -> bool:
    return (DEFAULT_POLICY / "config.json").is_file() and (DEFAULT_ENERGY / "config.json").is_file()


def write_tiny_bundles(
    directory: str | Path,
    seed: int = 0,
    cameras: tuple[str, ...] = (TINY_CAMERA,),
    lowdim_dim: int = TINY_LOWDIM,
    state_dim: int = 0,
) -> tuple[Path, Path]:
    """A tiny reference policy (by default one 32x32 camera + the synthetic low-dim state; e.g.
    LIBERO's two cameras + 8-D state with `cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8`) and
    a matching energy head with random weights, written with the models' own save methods.
    -> (policy_dir, energy_dir)."""
    directory = Path(directory)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ReferenceConfig.preset(
        "tiny", cameras=cameras, lowdim_dim=lowdim_dim, state_dim=state_dim, num_layers=2
    )
    actions = rng.uniform(-1, 1, size=(256, config.action_dim)).astype(np.float32)
    actions[:, 6] = np.sign(actions[:, 6])  # the gripper is binary
    stats = NormStats.from_data(
        actions, rng.normal(size=(256, lowdim_dim + state_dim)).astype(np.float32), binary_dims=(6,)
    )
    policy = ReferenceVLA(config, stats).eval()
    energy = EnergyModel(
        EnergyConfig(
            context_dim=config.hidden_size,
            action_dim=config.action_dim,
            chunk_len=config.chunk_len,
            hidden=32,
            heads=4,
        )  # fmt: skip
    ).eval()
    return policy.save(directory / "policy"), energy.save_pretrained(directory / "energy")


class ServerProcess:
    """`energy-rerank serve ARGS --address 127.0.0.1:0 --metrics-port 0` in a subprocess."""

    LISTEN = re.compile(r"listening on (\S+)")
    METRICS = re.compile(r"metrics at (\S+)")

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, startup_timeout: float = 120.0
    ) -> None:
        self.args = ["--address", "127.0.0.1:0", "--metrics-port", "0", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.lines: list[str] = []
        self.address = ""
        self.metrics_url = ""

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "energy_rerank.cli", "serve", *self.args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(self.startup_timeout) or not self.address:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"server did not start; output:\n{self.output}")
        return self

    def _read(self, ready: threading.Event) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if m := self.LISTEN.search(line):
                self.address = m.group(1)
            if m := self.METRICS.search(line):
                self.metrics_url = m.group(1)
                ready.set()
        ready.set()  # exited before it was ready: __enter__ reports the output

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class InProcessServer:
    """A RerankServer on its own event loop in a daemon thread, bound to a free loopback port.
    Blocking clients in the test thread call it over a real channel; `server.servicer.reranker`
    can be replaced or wrapped to inject faults."""

    def __init__(self, reranker: Reranker, config: ServerConfig | None = None) -> None:
        self.reranker = reranker
        self.config = config or ServerConfig(address="127.0.0.1:0", metrics_port=None)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        self.server: RerankServer = self.run(self._start())
        self.address = self.server.address
        return self

    async def _start(self) -> RerankServer:
        from energy_rerank.server.app import RerankServer  # health/reflection: the server-only extras

        server = RerankServer(self.config, self.reranker)  # grpc.aio binds to the running loop
        await server.start()
        return server

    def run(self, coro, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        """Run a coroutine on the server's loop from the calling thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.server.drain(grace=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
