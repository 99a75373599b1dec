"""The candidates a head is served with: the sampler it was trained with (recorded in its bundle by
`energy-rerank train`), unless `serve --sigmas --gripper-mode --layer-candidates` override it;
GetModelInfo says which."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from energy_rerank.candidates import SamplerConfig
from energy_rerank.checkpoint import CONFIG_FILE, read_head_record
from energy_rerank.config import config_to_dict
from energy_rerank.policy.base import Observation
from energy_rerank.server.cli import add_parser, config_from_args
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy

RECORDED = SamplerConfig(sigmas=(0.01,), gripper_mode="flip")  # what the head "was trained with"


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *flags])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The tiny policy, its head without a sampler record, and the same head recording RECORDED."""
    root = tmp_path_factory.mktemp("bundles")
    policy_dir, plain = write_tiny_bundles(root)
    recorded = root / "energy_recorded"
    shutil.copytree(plain, recorded)
    meta = json.loads((recorded / CONFIG_FILE).read_text())
    meta["extra"] = {"sampler": config_to_dict(RECORDED)}
    (recorded / CONFIG_FILE).write_text(json.dumps(meta))
    return policy_dir, plain, recorded


def test_flags_reach_the_config() -> None:
    cfg = config_from_args(parse())
    assert cfg.sigmas is None and cfg.gripper_mode is None  # unset: the head's own
    cfg = config_from_args(parse("--sigmas", "0.02,0.05,0.1", "--gripper-mode", "flip"))
    assert cfg.sigmas == (0.02, 0.05, 0.1) and cfg.gripper_mode == "flip"
    assert cfg.layer_candidates is None  # unset: the head's own
    assert config_from_args(parse("--layer-candidates", "none")).layer_candidates == ()
    assert config_from_args(parse("--layer-candidates", "0,1")).layer_candidates == (0, 1)
    with pytest.raises(SystemExit):  # neither 'none' nor indices
        parse("--layer-candidates", "first")


def test_bad_sigmas_are_refused() -> None:
    with pytest.raises(SystemExit):  # argparse usage error: not numbers
        parse("--sigmas", "0.1,x")
    with pytest.raises(ValueError, match="sigmas"):  # numbers, but negative
        config_from_args(parse("--sigmas", "-0.1"))


def test_head_record_reads_the_sampler_and_applies_overrides(bundles) -> None:
    _, plain, recorded = bundles
    assert read_head_record(plain).sampler == SamplerConfig()  # no record: the defaults
    assert read_head_record(recorded).sampler == RECORDED
    assert read_head_record(recorded).with_sampler(gripper_mode="keep") == dataclasses.replace(RECORDED, gripper_mode="keep")
    assert read_head_record(recorded).with_sampler(sigmas=(0.2,)) == dataclasses.replace(RECORDED, sigmas=(0.2,))
    assert read_head_record(recorded).with_sampler(layers=()) == dataclasses.replace(RECORDED, layers=())


def test_the_served_candidates_follow_the_head_and_the_flags(bundles) -> None:
    policy_dir, plain, recorded = bundles
    rng = np.random.default_rng(0)
    obs = Observation(
        images={TINY_CAMERA: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        lowdim=rng.normal(size=TINY_LOWDIM).astype(np.float32),
    )

    def candidates(energy, *flags: str) -> tuple[np.ndarray, SamplerConfig]:
        args = ("--policy", str(policy_dir), "--energy", str(energy), "--backend", "torch", *flags)
        cfg = config_from_args(parse(*args))
        reranker = load_reranker(cfg)
        with (
            InProcessServer(reranker, dataclasses.replace(cfg, address="127.0.0.1:0", metrics_port=None)) as srv,
            RerankClient(srv.address, timeout=30, retry=RetryPolicy(attempts=1)) as client,
        ):
            info = client.info()
            assert info.sampler_sigmas == pytest.approx(reranker.sampler.config.sigmas)
            assert info.gripper_mode == reranker.sampler.config.gripper_mode
            assert info.gripper_dims == (info.action_dim - 1,)  # spread() below skips the last dim
            chunks = client.select(
                images={TINY_CAMERA: obs.images[TINY_CAMERA]}, lowdim=obs.lowdim, num_candidates=16, seed=3,
                return_candidates=True,
            ).candidates  # fmt: skip
        return chunks, reranker.sampler.config

    def spread(c: np.ndarray) -> float:  # noise candidates vs the base chunk, motion dims only
        return float(np.abs(c[4:, :, :-1] - c[:1, :, :-1]).mean())

    wide, sampler = candidates(plain)
    assert sampler == SamplerConfig()
    narrow, sampler = candidates(recorded)  # no flags: the head's record
    assert sampler == RECORDED
    np.testing.assert_array_equal(wide[0], narrow[0])  # the policy's own chunk either way
    assert spread(narrow) < 0.2 * spread(wide)
    overridden, sampler = candidates(recorded, "--sigmas", "0.1,0.3,0.5", "--gripper-mode", "keep")
    assert sampler == SamplerConfig()  # the flags win over the record
    assert spread(overridden) == pytest.approx(spread(wide))
    # candidates 1.. are the policy's layer chunks, then noise; without layer chunks, noise only
    noise_only, sampler = candidates(recorded, "--layer-candidates", "none")
    assert sampler == dataclasses.replace(RECORDED, layers=())
    np.testing.assert_array_equal(noise_only[0], narrow[0])

    def off_base(c: np.ndarray) -> float:  # candidate 1 against the base chunk, motion dims
        return float(np.abs(c[1, :, :-1] - c[0, :, :-1]).mean())

    assert off_base(noise_only) < 0.2 * off_base(narrow)  # sigma 0.01 noise, not a layer chunk
