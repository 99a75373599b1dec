"""pi0 as a proposer: a tiny random transformers pi0 on disk, bundled by `policy-bundle pi0`.

N candidates are N flow-matching draws sharing one prefix pass; they equal N separate
`sample_actions` calls from the same noises. The bundle goes through cache-features, train and
serve, and a real gRPC server answers with one of the policy's own draws and its N energies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.cli import main
from energy_rerank.data import load_data
from energy_rerank.policy.base import DrawingProposer, Observation, propose_with_draws
from energy_rerank.policy.loading import load_policy
from energy_rerank.policy.pi0 import PI0Proposer
from energy_rerank.policy.tiny import write_tiny_demos, write_tiny_pi0
from energy_rerank.training.cache import FeatureCache

H, A = 8, 7


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pi0")
    ckpt = write_tiny_pi0(root / "checkpoint", chunk_size=10, steps=3)
    demos = write_tiny_demos(root / "demos.hdf5", image_size=32)
    bundle = root / "policy"
    assert main(["policy-bundle", "pi0", "--checkpoint", str(ckpt), "--data", str(demos),
                 "--chunk-len", str(H), "--out", str(bundle)]) == 0  # fmt: skip
    return {"root": root, "checkpoint": ckpt, "demos": demos, "bundle": bundle}


def _observations(n: int = 2) -> list[Observation]:
    rng = np.random.default_rng(0)
    return [
        Observation(
            images={cam: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for cam in ("agentview", "eye_in_hand")},
            state=rng.normal(size=8).astype(np.float32),
            instruction=["pick up the bowl", "open the top drawer of the cabinet"][i % 2],
        )
        for i in range(n)
    ]


def _separate_calls(policy: PI0Proposer, obs: list[Observation], seeds: list[int], n: int) -> torch.Tensor:
    """N separate `sample_actions` calls (each its own prefix pass) from the same noises -> [B, N, H, A]."""
    inputs = policy.build_inputs(obs)
    noise = policy.draw_noise(seeds, n).to(policy.dtype)
    steps = policy.config.num_steps
    draws = [policy.model.sample_actions(**inputs, noise=noise[:, j], num_steps=steps) for j in range(n)]
    return torch.stack(draws, 1)[:, :, :H, :A].float()


# Tolerances per dtype: fp32 differs only by the batched matmuls' summation order (~1e-7 seen);
# bf16 rounds every activation to 8 bits of mantissa, and the batch of N draws may round
# differently from one draw, through 3 integration steps (a few 1e-2 in normalised units).
TOLERANCE = {"float32": 1e-5, "bfloat16": 6e-2}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shared_prefix_equals_separate_sample_actions(files: dict[str, Path], dtype: str, tmp_path: Path) -> None:
    bundle = tmp_path / "policy"
    argv = ["policy-bundle", "pi0", "--checkpoint", str(files["checkpoint"]), "--stats", str(files["bundle"] / "stats.json")]
    assert main([*argv, "--chunk-len", str(H), "--dtype", dtype, "--out", str(bundle)]) == 0
    policy = load_policy(bundle)
    assert isinstance(policy, PI0Proposer) and isinstance(policy, DrawingProposer)
    obs, seeds, n = _observations(2), [11, 12], 6
    p = policy.propose_draws(obs, n, seeds)
    assert p.draws is not None and p.draws.shape == (2, n, H, A)
    assert p.layer_actions.shape == (2, 0, H, A)  # no layer actions: a normal case of Proposals
    assert torch.equal(p.base, p.draws[:, 0])
    separate = _separate_calls(policy, obs, seeds, n)
    err = (p.draws - separate).abs().max().item()
    assert err <= TOLERANCE[dtype], err
    assert (p.draws[:, 1:] - p.draws[:, :1]).abs().amax().item() > 1e-3  # the draws differ from each other


def test_draws_are_seeded_and_prefix_stable(files: dict[str, Path]) -> None:
    policy = load_policy(files["bundle"])
    obs = _observations(2)
    many = propose_with_draws(policy, obs, 20, [3, 4])  # crosses a noise block (16)
    few = propose_with_draws(policy, obs, 5, [3, 4])
    assert many.draws is not None and few.draws is not None
    torch.testing.assert_close(many.draws[:, :5], few.draws, atol=1e-5, rtol=0)
    alone = propose_with_draws(policy, obs[:1], 1, [3])  # what the policy acts on alone, seed 3
    torch.testing.assert_close(alone.base, many.base[:1], atol=1e-5, rtol=0)
    other = propose_with_draws(policy, obs, 5, [5, 4])
    assert other.draws is not None
    assert not torch.allclose(other.draws[0], few.draws[0]) and torch.allclose(other.draws[1], few.draws[1], atol=1e-5)
    # the context: prefix hidden states of images + prompt, padding invalid
    assert many.context.shape[2] == policy.description.hidden_size
    assert 0 < int(many.valid[0].sum()) < many.valid.shape[1]


def test_sampler_puts_draws_first_then_optional_noise(files: dict[str, Path]) -> None:
    policy = load_policy(files["bundle"])
    obs = _observations(1)
    sampler = CandidateSampler.for_policy(policy, SamplerConfig(draws=4, sigmas=(0.2,)))
    p = propose_with_draws(policy, obs, min(10, sampler.config.draws), [7])
    cands = sampler.sample(p, 10, seeds=[7])  # [1, 10, H, A]
    assert p.draws is not None
    expected = torch.maximum(torch.minimum(p.draws[0], sampler.high), sampler.low)
    g = list(policy.description.gripper_dims)
    keep = [d for d in range(A) if d not in g]
    torch.testing.assert_close(cands[0, :4][..., keep], expected[..., keep])  # 4 draws (snapped gripper aside)
    noise = cands[0, 4:][..., keep] - cands[0, :1][..., keep]  # Gaussian perturbations around draw 0
    assert noise.abs().amax().item() > 0.01


def test_bundle_refuses_a_mismatched_config(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    base = ["policy-bundle", "pi0", "--checkpoint", str(files["checkpoint"]), "--stats", str(files["bundle"] / "stats.json")]
    cases = {
        "chunk_len=12 exceeds the checkpoint's chunk_size 10": ["--chunk-len", "12"],
        "hidden_size=64 but the VLM's hidden_size is 32": ["--hidden-size", "64"],
        "action_dim=40 exceeds the checkpoint's max_action_dim 32": ["--action-dim", "40"],
        "--action-dim 6, but the statistics have 7 action dims": ["--action-dim", "6", "--gripper-dims", "5"],
        "--state-dim 5, but the statistics have 8 state dims": ["--state-dim", "5"],
    }
    for message, extra in cases.items():
        with pytest.raises(SystemExit) as e:
            main([*base, *extra, "--out", str(tmp_path / "x")])
        assert message in str(e.value), (message, str(e.value))
    with pytest.raises(SystemExit, match="model_type is 'llama', expected 'pi0'"):
        from transformers import LlamaConfig

        LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "llama")
        main(["policy-bundle", "pi0", "--checkpoint", str(tmp_path / "llama"), "--stats",
              str(files["bundle"] / "stats.json"), "--out", str(tmp_path / "y")])  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_pi0_caches_trains_serves_and_answers_with_its_own_draw(files: dict[str, Path], tmp_path: Path) -> None:
    from energy_rerank.server.testing import ServerProcess
    from energy_rerank_client import RerankClient

    bundle, demos = files["bundle"], files["demos"]
    cache = tmp_path / "features"
    assert main(["cache-features", "--policy", str(bundle), "--data", str(demos), "--stride", "4",
                 "--batch-size", "4", "--out", str(cache)]) == 0  # fmt: skip
    features = FeatureCache(cache)
    policy = load_policy(bundle)
    windows = load_data([str(demos)], H, stride=4, images=True).windows
    assert len(features) == len(windows)
    batch = features.load_all()
    draws = policy.config.draws  # type: ignore[attr-defined]
    assert batch.layer_actions.shape[1:] == (draws, H, A)  # the draws, stored where layer chunks go
    torch.testing.assert_close(batch.layer_actions[:, -1], batch.base)  # last = draw 0 = the policy's chunk
    energy = tmp_path / "energy"
    assert main(["train", "--preset", "tiny-reference", "--loss", "listwise", "--cache", str(cache),
                 "--steps", "3", "--batch-size", "4", "--out", str(energy)]) == 0  # fmt: skip
    assert (energy / "model.safetensors").is_file()

    obs = windows.observations[0]
    n, seed = 8, 5
    with ServerProcess(["--policy", str(bundle), "--energy", str(energy), "--backend", "torch"]) as server:
        with RerankClient(server.address, timeout=60.0) as client:
            info = client.info()
            r = client.select(obs.images, obs.state, instruction=obs.instruction, num_candidates=n, seed=seed,
                              return_candidates=True)  # fmt: skip
    assert (info.chunk_len, info.action_dim, tuple(info.cameras)) == (H, A, ("agentview", "eye_in_hand"))
    assert r.energies.shape == (n,) and np.isfinite(r.energies).all() and not r.fallback
    assert 0 <= r.index < n and r.candidates is not None
    np.testing.assert_allclose(r.chunk, r.candidates[r.index], atol=1e-6)
    # the N candidates are the policy's own N draws for this seed, in robot units
    own = propose_with_draws(policy, [obs], n, [seed]).draws
    assert own is not None
    sampler = CandidateSampler.for_policy(policy)
    mine = sampler.sample(propose_with_draws(policy, [obs], n, [seed]), n, seeds=[seed])[0]
    assert policy.stats is not None
    robot = policy.stats.unnormalize_actions(mine).numpy()
    np.testing.assert_allclose(r.candidates, np.clip(robot, *(b.numpy() for b in policy.stats.action_bounds(False))), atol=1e-4)
    assert not np.allclose(r.candidates[0], r.candidates[1], atol=1e-3)

    out = tmp_path / "eval"
    assert main(["eval", "offline", "--data", str(demos), "--stride", "6", "--policy", str(bundle), "--energy", str(energy),
                 "--n-candidates", "1,4", "--out", str(out)]) == 0  # fmt: skip


def test_candidate_bench_runs(tmp_path: Path) -> None:
    """bench/candidates_pi0.py on the tiny pi0: both ways timed in one run, ratios recorded."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("candidates_pi0", Path(__file__).parents[1] / "bench" / "candidates_pi0.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--ns", "1", "4", "--repeats", "1", "--out", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["n"] for r in rows] == [1, 4] and all(r["shared_ms"] > 0 and r["ratio"] > 0 for r in rows)
