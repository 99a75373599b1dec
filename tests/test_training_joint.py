"""Modes with the real reference policy: gradient isolation in joint mode, alternating phases,
and energy-only training that can only move the energy head."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.synthetic import SyntheticTask
from energy_rerank.training.config import TINY_REFERENCE_ENERGY, TrainConfig, preset
from energy_rerank.training.energy_trainer import EnergyTrainer
from energy_rerank.training.policy_data import PolicyWindows


@pytest.fixture(scope="module")
def task_windows():
    task = SyntheticTask()
    return task, task.windows(task.episodes(3, seed=0), stride=2)


def _policy(task: SyntheticTask) -> ReferenceVLA:
    torch.manual_seed(0)
    return ReferenceVLA(ReferenceConfig.preset("tiny", lowdim_dim=task.lowdim_dim, chunk_len=task.chunk_len))


def _config(mode: str, steps: int) -> TrainConfig:
    base = preset("tiny-reference")
    return base.replace(
        mode=mode,
        steps=steps,
        data=dataclasses.replace(base.data, batch_size=6, holdout_fraction=0.1, holdout_max=6),
        log_every=1,
        eval_every=1000,
        checkpoint_every=0,
        tensorboard=False,
        alternate_every=1,
    )


class GradLog:
    """Records, per parameter group, in which phase a gradient arrived."""

    def __init__(self) -> None:
        self.phase = "none"
        self.seen: dict[str, set[str]] = {"policy": set(), "energy": set()}

    def watch(self, module: torch.nn.Module, group: str) -> None:
        for p in module.parameters():
            if p.requires_grad:
                p.register_hook(lambda g, group=group: self.seen[group].add(self.phase))

    def wrap(self, trainer: EnergyTrainer) -> None:
        for name, phase in (("policy_step", "l1"), ("energy_step", "energy")):
            fn = getattr(trainer, name)

            def wrapped(*a, fn=fn, phase=phase):
                self.phase = phase
                try:
                    return fn(*a)
                finally:
                    self.phase = "none"

            setattr(trainer, name, wrapped)


def test_joint_mode_isolates_the_two_losses(tmp_path: Path, task_windows) -> None:
    task, windows = task_windows
    policy = _policy(task)
    t = EnergyTrainer(_config("joint", 3), tmp_path, policy=policy, windows=PolicyWindows(policy, windows))
    log = GradLog()
    log.watch(policy, "policy")
    log.watch(t.model, "energy")
    log.wrap(t)
    p0 = {k: v.clone() for k, v in policy.state_dict().items()}
    e0 = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    assert log.seen["policy"] == {"l1"}, f"policy parameters got gradients in phases {log.seen['policy']}"
    assert log.seen["energy"] == {"energy"}, f"energy parameters got gradients in phases {log.seen['energy']}"
    assert t.policy_opt.applied_steps == 3 and t.energy_opt.applied_steps == 3
    assert any(not torch.equal(p0[k], v) for k, v in policy.state_dict().items())
    assert any(not torch.equal(e0[k], v) for k, v in t.model.state_dict().items())
    # The features the energy step sees are detached from the policy graph.
    feats = t._features(torch.arange(4))
    assert not feats.context.requires_grad and not feats.layer_actions.requires_grad


def test_alternating_mode_moves_one_side_per_phase(tmp_path: Path, task_windows) -> None:
    task, windows = task_windows
    policy = _policy(task)
    t = EnergyTrainer(_config("alternating", 4), tmp_path, policy=policy, windows=PolicyWindows(policy, windows))
    for step in range(4):
        p0 = [p.clone() for p in policy.parameters()]
        e0 = [p.clone() for p in t.model.parameters()]
        t.train_step(step)
        policy_moved = any(not torch.equal(a, b) for a, b in zip(p0, policy.parameters(), strict=True))
        energy_moved = any(not torch.equal(a, b) for a, b in zip(e0, t.model.parameters(), strict=True))
        assert (policy_moved, energy_moved) == ((True, False) if step % 2 == 0 else (False, True)), step


def test_energy_only_mode_has_only_energy_parameters_trainable(tmp_path: Path, task_windows) -> None:
    task, windows = task_windows
    policy = _policy(task)
    t = EnergyTrainer(_config("energy-only", 2), tmp_path, policy=policy, windows=PolicyWindows(policy, windows))
    assert t.model.config == TINY_REFERENCE_ENERGY
    trainable = {id(p) for p in t.trainable_parameters()}
    assert trainable == {id(p) for p in t.model.parameters()}
    assert not any(p.requires_grad for p in policy.parameters())
    assert t.policy_opt is None
    p0 = {k: v.clone() for k, v in policy.state_dict().items()}
    t.fit()
    assert t.energy_opt.applied_steps == 2
    assert all(torch.equal(p0[k], v) for k, v in policy.state_dict().items())
    assert all(p.grad is None for p in policy.parameters())
