"""`serve --sigmas --gripper-mode`: the server builds candidates the way the head was trained to rank,
and says so in GetModelInfo."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from energy_rerank.candidates import SamplerConfig
from energy_rerank.policy.base import Observation
from energy_rerank.server.cli import add_parser, config_from_args
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy


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
        with (
            InProcessServer(reranker, dataclasses.replace(cfg, address="127.0.0.1:0", metrics_port=None)) as srv,
            RerankClient(srv.address, timeout=30, retry=RetryPolicy(attempts=1)) as client,
        ):
            info = client.info()
            assert info.sampler_sigmas == pytest.approx(cfg.sampler.sigmas)
            assert info.gripper_mode == cfg.sampler.gripper_mode
            assert info.gripper_dims == (info.action_dim - 1,)  # spread() below skips the last dim
            return client.select(
                images={TINY_CAMERA: obs.images[TINY_CAMERA]}, lowdim=obs.lowdim, num_candidates=16, seed=3,
                return_candidates=True,
            ).candidates  # fmt: skip

    def spread(c: np.ndarray) -> float:  # noise candidates vs the base chunk, motion dims only
        return float(np.abs(c[4:, :, :-1] - c[:1, :, :-1]).mean())

    wide, narrow = candidates(), candidates("--sigmas", "0.01", "--gripper-mode", "flip")
    np.testing.assert_array_equal(wide[0], narrow[0])  # the policy's own chunk either way
    assert spread(narrow) < 0.2 * spread(wide)
