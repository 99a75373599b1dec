"""`serve --sigmas --gripper-mode`: the server builds candidates the way the head was trained to rank."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from energy_rerank.candidates import SamplerConfig
from energy_rerank.policy.base import Observation
from energy_rerank.reranker import SelectParams
from energy_rerank.server.cli import add_parser, config_from_args
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, write_tiny_bundles


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *flags])


def test_flags_reach_the_config() -> None:
    assert config_from_args(parse()).sampler == SamplerConfig()  # defaults unchanged
    cfg = config_from_args(parse("--sigmas", "0.02,0.05,0.1", "--gripper-mode", "flip"))
    assert cfg.sampler == SamplerConfig(sigmas=(0.02, 0.05, 0.1), gripper_mode="flip")


def test_bad_sigmas_are_refused() -> None:
    with pytest.raises(SystemExit):  # argparse usage error: not numbers
        parse("--sigmas", "0.1,x")
    with pytest.raises(ValueError, match="sigmas"):  # numbers, but negative
        config_from_args(parse("--sigmas", "-0.1"))


def test_the_served_candidates_follow_the_sampler(tmp_path) -> None:
    policy_dir, energy_dir = write_tiny_bundles(tmp_path)
    rng = np.random.default_rng(0)
    obs = Observation(
        images={TINY_CAMERA: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        lowdim=rng.normal(size=TINY_LOWDIM).astype(np.float32),
    )

    def candidates(*flags: str) -> np.ndarray:
        flags = ("--policy", str(policy_dir), "--energy", str(energy_dir), "--backend", "torch", *flags)
        cfg = config_from_args(parse(*flags))
        reranker = load_reranker(cfg)
        assert reranker.sampler.config == cfg.sampler
        return reranker.select([obs], [SelectParams(num_candidates=16, seed=3, return_candidates=True)])[0].candidates

    def spread(c: np.ndarray) -> float:  # noise candidates vs the base chunk (after the layer chunks)
        return float(np.abs(c[4:] - c[:1]).mean())

    wide, narrow = candidates(), candidates("--sigmas", "0.01")
    np.testing.assert_array_equal(wide[0], narrow[0])  # the policy's own chunk either way
    assert spread(narrow) < 0.2 * spread(wide)
