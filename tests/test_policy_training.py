"""Behaviour cloning of the tiny reference policy on the synthetic task, on the CPU.

One policy is trained per module (about a minute on a loaded 2-core machine) and shared by
the tests: held-out L1 halves, later layers beat early ones, the bundle and TensorBoard logs
exist, and the oracle best-of-N error falls as N grows.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.cli import main as cli_main
from energy_rerank.policy.loading import load_policy
from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.synthetic import SyntheticTask
from energy_rerank.training.bc import BCConfig, train_bc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bc")
    task = SyntheticTask()
    train = task.windows(task.episodes(150, seed=0))
    val = task.windows(task.episodes(20, seed=1), stride=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a shared machine: one thread avoids OpenMP contention
    try:
        torch.manual_seed(0)
        policy = ReferenceVLA(ReferenceConfig.preset("tiny", lowdim_dim=task.lowdim_dim, max_text_len=28))
        start = time.perf_counter()
        result = train_bc(
            policy,
            train,
            val,
            BCConfig(steps=300, batch_size=32, eval_every=150),
            log_dir=out / "logs",
            out=out / "policy",
            progress=False,
        )
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"task": task, "policy": policy, "result": result, "seconds": seconds, "out": out}


def test_tiny_policy_halves_heldout_l1(trained: dict[str, Any]) -> None:
    r = trained["result"]
    print(f"BC: {trained['seconds']:.1f} s, held-out L1 per layer {r.initial_val_l1} -> {r.final_val_l1}")
    assert r.final_val_l1[-1] < 0.5 * r.initial_val_l1[-1]
    assert r.skipped_steps == 0


def test_later_layers_give_better_chunks(trained: dict[str, Any]) -> None:
    l1 = trained["result"].final_val_l1
    assert l1[-1] < 0.97 * l1[0], l1
    assert l1[-1] <= min(l1) + 1e-6, l1


def test_bundle_and_logs(trained: dict[str, Any]) -> None:
    out, policy, task = trained["out"], trained["policy"], trained["task"]
    assert list((out / "logs").glob("events.out.tfevents.*"))
    loaded = load_policy(out / "policy")
    obs = task.windows(task.episodes(1, seed=9), stride=8).observations
    assert loaded.stats == policy.stats
    assert torch.allclose(loaded.propose(obs).base, policy.propose(obs).base, atol=1e-6)


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_best_of_n_falls_with_n(trained: dict[str, Any]) -> None:
    task, policy = trained["task"], trained["policy"]
    held = task.windows(task.episodes(12, seed=2), stride=2)
    sampler = CandidateSampler.for_policy(policy, SamplerConfig())
    ns = [1, 4, 16, 64]
    curve = _script("oracle_best_of_n").oracle_best_of_n(policy, sampler, held, ns)
    print("oracle best-of-N L1:", curve)
    values = [curve[n] for n in ns]
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), curve  # falls at every step
    assert curve[64] < 0.95 * curve[1], curve


@pytest.mark.parametrize("inputs", ["lowdim", "image"])
def test_train_policy_command(tmp_path: Path, inputs: str) -> None:
    args = [
        "train-policy",
        "--out",
        str(tmp_path / "p"),
        "--inputs",
        inputs,
        "--steps",
        "2",
        "--data",
        "synthetic:episodes=2" + (",image_size=32" if inputs == "image" else ""),
    ]
    args += ["--val-episodes", "1", "--eval-every", "2", "--batch-size", "8", "--no-progress"]
    assert cli_main(args) == 0
    policy = load_policy(tmp_path / "p")
    assert (policy.description.cameras == ("agentview",)) == (inputs == "image")
    assert (tmp_path / "p" / "stats.json").is_file() and list((tmp_path / "p" / "logs").glob("events.*"))
