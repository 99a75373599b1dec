"""ReferenceVLA with random weights: Proposals shapes, context mask, bundles, input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank.checkpoint import BundleError, save_bundle
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, Proposer
from energy_rerank.policy.loading import load_policy
from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.policy.tokenizer import ByteTokenizer
from energy_rerank.synthetic import SyntheticConfig, SyntheticTask

TASK = SyntheticTask(SyntheticConfig(image_size=32))


@pytest.fixture(scope="module")
def observations() -> list[Observation]:
    return TASK.windows(TASK.episodes(2, seed=0), stride=6).observations


def lowdim_policy(**kw) -> ReferenceVLA:
    torch.manual_seed(0)
    return ReferenceVLA(ReferenceConfig.preset("tiny", lowdim_dim=TASK.lowdim_dim, **kw)).eval()


def test_lowdim_policy_proposals(observations: list[Observation]) -> None:
    policy = lowdim_policy()
    assert isinstance(policy, Proposer)
    c = policy.config
    p = policy.propose(observations)
    b = len(observations)
    assert p.context.shape == (b, c.seq_len, c.hidden_size)
    assert p.layer_actions.shape == (b, c.num_layers, c.chunk_len, c.action_dim)
    assert torch.equal(p.base, p.layer_actions[:, -1])
    assert not p.layer_actions.requires_grad and bool(torch.isfinite(p.layer_actions).all())
    # valid: state tokens + BOS/instruction bytes/EOS; padding and action queries are not
    n_text = [len(o.instruction.encode()) + 2 for o in observations]
    assert p.valid.sum(1).tolist() == [c.num_state_tokens + n for n in n_text]
    assert c.num_state_tokens == TASK.lowdim_dim  # one token per state dim by default
    assert not bool(p.valid[:, -c.chunk_len :].any())
    d = policy.description
    assert (d.hidden_size, d.num_layers, d.chunk_len, d.lowdim_dim, d.cameras) == (
        64,
        3,
        8,
        TASK.lowdim_dim,
        (),
    )


def test_context_layer_picks_the_hidden_state(observations: list[Observation]) -> None:
    """context_layer selects which hidden states the energy head reads; the chunks do not change."""
    last = lowdim_policy().propose(observations)
    contexts = {}
    for layer in (0, 1, -1):
        policy = lowdim_policy(context_layer=layer)
        p = policy.propose(observations)
        assert torch.equal(p.layer_actions, last.layer_actions) and torch.equal(p.valid, last.valid)
        contexts[layer] = p.context
    assert torch.equal(contexts[-1], last.context)  # the default is the last layer, as before
    # Layer 0 is the token embeddings: the instruction bytes' rows are their embedding vectors.
    policy = lowdim_policy(context_layer=0)
    inputs = policy.encode(observations)
    n = policy.config.num_state_tokens
    with torch.no_grad():
        text = policy.backbone.embed_tokens(inputs.text_ids)  # [B, T, D]
    torch.testing.assert_close(contexts[0][:, n : n + text.shape[1]], text)
    assert not torch.allclose(contexts[0], contexts[1]) and not torch.allclose(contexts[1], contexts[-1])
    for bad in (4, -5):  # tiny: 3 layers -> hidden states 0..3 (or -4..-1)
        with pytest.raises(ValueError, match="context_layer"):
            ReferenceConfig.preset("tiny", lowdim_dim=TASK.lowdim_dim, context_layer=bad)


def test_image_policy_proposals(observations: list[Observation]) -> None:
    torch.manual_seed(0)
    cfg = ReferenceConfig.preset(
        "tiny", cameras=("agentview",), state_dim=7, image_size=(16, 16), patch_size=8
    )
    policy = ReferenceVLA(cfg).eval()
    p = policy.propose(observations[:3])  # 32x32 images are resized to 16x16
    assert p.context.shape == (3, 7 + 4 + cfg.max_text_len + cfg.chunk_len, 64)  # 7 state + 4 patches
    assert p.valid[:, : 7 + 4].all()
    assert policy.description.cameras == ("agentview",) and policy.description.image_size == (16, 16)
    with pytest.raises(ValueError, match="camera 'agentview' is missing"):
        policy.propose([Observation(state=np.zeros(7, np.float32), instruction="x")])


def test_batching_does_not_change_a_proposal(observations: list[Observation]) -> None:
    policy = lowdim_policy()
    together = policy.propose(observations[:4])
    alone = policy.propose(observations[2:3])
    assert torch.allclose(together.base[2], alone.base[0], atol=1e-5)


def test_instruction_and_state_both_change_the_chunk(observations: list[Observation]) -> None:
    policy = lowdim_policy()
    o = observations[0]
    assert "purple" not in o.instruction
    other_text = Observation(lowdim=o.lowdim, instruction="go to the purple block")
    other_state = Observation(lowdim=o.lowdim + 0.5, instruction=o.instruction)
    base = policy.propose([o, other_text, other_state]).base
    assert not torch.allclose(base[0], base[1]) and not torch.allclose(base[0], base[2])


def test_bundle_round_trip_through_load_policy(tmp_path: Path, observations: list[Observation]) -> None:
    policy = lowdim_policy(num_layers=2)
    chunks = np.random.default_rng(0).uniform(-1, 1, (64, 7)).astype(np.float32)
    states = np.stack([o.lowdim for o in observations])
    policy.stats = NormStats.from_data(chunks, state=np.repeat(states, 4, 0), binary_dims=(6,))
    policy.save(tmp_path / "policy")
    loaded = load_policy(tmp_path / "policy")
    assert isinstance(loaded, ReferenceVLA) and loaded.stats == policy.stats
    assert loaded.config == policy.config
    assert torch.equal(loaded.propose(observations).base, policy.propose(observations).base)


def test_load_policy_rejects_other_kinds(tmp_path: Path) -> None:
    save_bundle(tmp_path / "x", "energy_head", ReferenceConfig(), torch.nn.Linear(1, 1))
    with pytest.raises(BundleError, match="not a policy"):
        load_policy(tmp_path / "x")


def test_bad_observations_name_the_field(observations: list[Observation]) -> None:
    policy = lowdim_policy()
    with pytest.raises(ValueError, match="`lowdim` is required"):
        policy.propose([Observation(instruction="reach the red block")])
    with pytest.raises(ValueError, match=rf"lowdim must be finite float \[{TASK.lowdim_dim}\]"):
        policy.propose([Observation(lowdim=np.zeros(3, np.float32), instruction="x")])
    with pytest.raises(ValueError, match="at least one"):
        policy.propose([])
    stats = NormStats.from_data(np.zeros((4, 7)), state=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="stats.state has 5 dims"):
        ReferenceVLA(policy.config, stats)


def test_byte_tokenizer_pads_and_cuts() -> None:
    tok = ByteTokenizer(8)
    ids, valid = tok.encode(["ab", "a much longer instruction"])
    assert ids.shape == (2, 8) and valid[0].sum() == 4 and valid[1].all()
    assert tok.decode(ids[0]) == "ab" and tok.decode(ids[1]) == "a much"
