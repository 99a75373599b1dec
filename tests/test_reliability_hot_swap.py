"""Model updates without downtime: swap the energy head of a running server under load.

The real server (subprocess) is loaded by clients that never retry; its head is swapped twice,
by SIGHUP after flipping the symlink it was started with, then by the admin RPC. Zero requests
may fail, every client sees the versions in order (v1 -> v2 -> v3, never back), each version
always comes with that head's energies (same observation and seed), and after the admin call
returns every answer comes from the new head. In process, with a slowed policy: a request
whose batch is running during the swap finishes on the old head. The admin RPC needs the token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import (
    TINY_CAMERA,
    TINY_LOWDIM,
    InProcessServer,
    ServerProcess,
    wait_until,
    write_tiny_bundles,
)
from energy_rerank_client import AsyncRerankClient, RerankClient, RetryPolicy

TOKEN = "swap-token-42"
NO_RETRY = RetryPolicy(attempts=1)
OBS = {
    "images": {TINY_CAMERA: np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)},
    "lowdim": np.random.default_rng(1).normal(size=TINY_LOWDIM).astype(np.float32),
}


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The policy and three different energy heads that fit it."""
    root = tmp_path_factory.mktemp("swap")
    policy, first = write_tiny_bundles(root / "v1", seed=0)
    return policy, [first] + [write_tiny_bundles(root / f"v{i}", seed=i)[1] for i in (2, 3)]


def point(link: Path, target: Path) -> None:
    """Atomically re-point a symlink (how a deploy flips a bundle: no half-written state)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_swap_under_load_by_sighup_then_admin_rpc(heads, tmp_path):
    policy, (v1, v2, v3) = heads
    link = tmp_path / "energy-current"
    point(link, v1)
    args = ["--policy", str(policy), "--energy", str(link), "--log-level", "WARNING"]
    with ServerProcess(args, env={"ENERGY_RERANK_TOKEN": TOKEN}) as srv:
        answers: list[list[tuple[str, tuple, float]]] = []  # per client: (version, energies, sent at)
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def client_loop() -> None:
            mine: list[tuple[str, tuple, float]] = []
            answers.append(mine)
            async with AsyncRerankClient(srv.address, token=TOKEN, timeout=60, retry=NO_RETRY) as c:
                for _ in range(2000):  # bounded even if the stop never comes
                    if stop.is_set():
                        return
                    sent = time.monotonic()
                    try:
                        r = await c.select(**OBS, num_candidates=8, seed=7)
                    except Exception as e:  # noqa: BLE001 - every failure is counted, none expected
                        failures.append(e)
                        continue
                    mine.append((r.model_version, tuple(np.round(r.energies, 5)), sent))

        def seen(version: str) -> int:
            return sum(a[0] == version for mine in answers for a in mine)

        async def until(predicate, timeout: float = 90.0) -> None:
            end = time.monotonic() + timeout
            while not predicate() and time.monotonic() < end:
                await asyncio.sleep(0.02)
            assert predicate(), "timed out"

        async def scenario():
            async with AsyncRerankClient(srv.address, token=TOKEN, timeout=60) as admin:
                first = (await admin.info()).model_version
                loops = [asyncio.create_task(client_loop()) for _ in range(8)]
                await until(lambda: seen(first) >= 40)
                point(link, v2)
                srv.proc.send_signal(signal.SIGHUP)
                await until(lambda: len({a[0] for mine in answers for a in mine}) >= 2)
                second = next(a[0] for mine in answers for a in mine if a[0] != first)
                await until(lambda: seen(second) >= 40)
                swap = await admin.reload_energy_head(str(v3))
                swapped_at = time.monotonic()
                await until(lambda: seen(swap.model_version) >= 40)
                stop.set()
                await asyncio.gather(*loops)
                return first, second, swap, swapped_at

        first, second, swap, swapped_at = asyncio.run(scenario())
        output = srv.output

    total = sum(len(m) for m in answers)
    counts = {v: sum(a[0] == v for m in answers for a in m) for v in (first, second, swap.model_version)}
    print(f"\nhot swap: {total} answers, {len(failures)} failed; per version {counts}; admin swap took "
          f"{swap.load_seconds:.2f} s on the server")  # fmt: skip
    assert not failures, failures[:3]
    assert f"reloaded {first} -> {second}" in output, output
    assert swap.previous_version == second and len({first, second, swap.model_version}) == 3
    order = {first: 0, second: 1, swap.model_version: 2}
    energies: dict[str, set] = {}
    for mine in answers:
        ranks = [order[v] for v, _, _ in mine]
        assert ranks == sorted(ranks), "a client saw an older head after a newer one"
        for v, e, sent in mine:
            energies.setdefault(v, set()).add(e)
            if sent > swapped_at:
                assert v == swap.model_version, "an answer after the admin call came from an old head"
    assert all(len(es) == 1 for es in energies.values()), "a version label came with another head's energies"
    assert len({next(iter(es)) for es in energies.values()}) == 3  # three heads, three rankings


# ------------------------------------------------------------------ in process
class SlowPolicy:
    def __init__(self, inner) -> None:
        self.inner, self.description, self.stats = inner, inner.description, inner.stats
        self.busy = threading.Event()

    def propose(self, observations):
        self.busy.set()
        time.sleep(0.5)
        return self.inner.propose(observations)


@pytest.fixture
def slow_server(heads):
    policy, (v1, _, _) = heads
    reranker = load_reranker(ServerConfig(policy_path=policy, energy_path=v1, backend="torch"))
    reranker.proposer = SlowPolicy(reranker.proposer)
    config = ServerConfig(
        address="127.0.0.1:0", metrics_port=None, auth_token=TOKEN, policy_path=policy, energy_path=v1
    )
    with InProcessServer(reranker, config) as srv:
        yield srv, reranker.proposer


def test_request_in_flight_during_the_swap_finishes_on_the_old_head(heads, slow_server):
    _, (_, v2, _) = heads
    srv, policy = slow_server
    with (
        RerankClient(srv.address, token=TOKEN, timeout=60, retry=NO_RETRY) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        before = c.select(**OBS, num_candidates=8, seed=3)
        policy.busy.clear()
        inflight = pool.submit(c.select, **OBS, num_candidates=8, seed=3)
        assert policy.busy.wait(30)
        swap = c.reload_energy_head(str(v2))  # returns once the new head is serving
        during = inflight.result(30)
        after = c.select(**OBS, num_candidates=8, seed=3)
    assert swap.previous_version == before.model_version != swap.model_version
    assert during.model_version == before.model_version  # ran on the old head ...
    np.testing.assert_allclose(during.energies, before.energies, atol=1e-6)  # ... and is its answer
    assert after.model_version == swap.model_version
    assert not np.allclose(after.energies, before.energies, atol=1e-4)
    assert srv.server.metrics.reloads.labels(result="ok")._value.get() == 1


def test_failed_reload_keeps_the_old_head_serving(heads, slow_server, tmp_path):
    srv, _ = slow_server
    unfit = EnergyModel(EnergyConfig(context_dim=16, action_dim=7, chunk_len=8, hidden=16, heads=2))
    unfit.save_pretrained(tmp_path / "unfit")
    with RerankClient(srv.address, token=TOKEN, timeout=60, retry=NO_RETRY) as c:
        version = c.info().model_version
        for path, message in ((tmp_path / "missing", "not found"), (tmp_path / "unfit", "does not fit")):
            with pytest.raises(grpc.RpcError) as e:
                c.reload_energy_head(str(path))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and message in e.value.details()
        r = c.select(**OBS, num_candidates=4, seed=0)
    assert r.model_version == version and np.isfinite(r.chunk).all()
    assert srv.server.metrics.reloads.labels(result="error")._value.get() == 2


def test_admin_rpc_needs_the_token(heads, slow_server):
    _, (_, v2, _) = heads
    srv, _ = slow_server
    for token, code in ((None, "UNAUTHENTICATED"), ("wrong", "UNAUTHENTICATED")):
        with RerankClient(srv.address, token=token, timeout=30, retry=NO_RETRY) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.reload_energy_head(str(v2))
            assert e.value.code().name == code
    assert wait_until(lambda: srv.server.metrics.reloads.labels(result="ok")._value.get() == 0, 1)


def test_admin_rpc_refused_on_a_server_without_a_token(heads):
    policy, (v1, v2, _) = heads
    reranker = load_reranker(ServerConfig(policy_path=policy, energy_path=v1, backend="torch"))
    with InProcessServer(reranker) as srv, RerankClient(srv.address, timeout=30, retry=NO_RETRY) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.reload_energy_head(str(v2))
        version = c.info().model_version
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "token" in e.value.details()
    assert version == reranker.model_version


def test_cli_reload(heads, slow_server, tmp_path, capsys):
    import json

    from energy_rerank_client.cli import main as cli_main

    _, (_, _, v3) = heads
    srv, _ = slow_server
    (tmp_path / "token").write_text(TOKEN)
    argv = ["--target", srv.address, "--token-file", str(tmp_path / "token"), "--timeout", "60"]
    assert cli_main([*argv, "reload", str(v3)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] != out["previous_version"] and out["load_seconds"] > 0
    assert cli_main([*argv[:2], "reload"]) == 1  # no token: refused, reported, exit code 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
