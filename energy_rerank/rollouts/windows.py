"""Rollout steps -> policy Observations, and episodes -> training windows (obs_t, a[t:t+H]).

The low-dim vector a LIBERO policy reads has the same layout for every task of a suite:
the instruction's two objects first (pos 3 + quat xyzw 4 each), then proprio. `state` is
openpi's 8-D LIBERO state (eef pos 3, eef axis-angle 3, gripper qpos 2). Parquet episodes
carry only `state`, so their `lowdim` is left empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from energy_rerank.policy.base import Observation
from energy_rerank.policy.windows import Windows
from energy_rerank.rollouts.episode import Episode, RolloutFormatError

STATE_KEYS = ("ee_pos", "ee_ori", "gripper_states")  # -> [8]
LOWDIM_KEYS = ("interest_states", *STATE_KEYS)  # -> [14 + 8 = 22]
LOWDIM_DIM = 22  # width of Observation.lowdim built from LOWDIM_KEYS
CAMERA_KEYS = {
    "agentview_rgb": "agentview",
    "eye_in_hand_rgb": "eye_in_hand",
    "image": "agentview",
    "wrist_image": "eye_in_hand",
}  # stored key -> Observation.images name


def step_observation(ep: Episode, t: int, images: bool = True) -> Observation:
    """The Observation a policy would have seen at step t of a recorded episode."""
    if not 0 <= t < ep.length:
        raise IndexError(f"{ep.name}: step {t} outside [0, {ep.length})")
    keys = [k for k in ep.obs if images or k not in CAMERA_KEYS]
    return observation_from_dict({k: ep.obs[k][t] for k in keys}, ep.instruction, where=ep.name)


def observation_from_dict(obs: dict[str, np.ndarray], instruction: str, where: str = "obs") -> Observation:
    """One step's LIBERO-keyed arrays (as stored, or as `LiberoSim` returns them) -> Observation."""
    if "state" in obs:  # LeRobot parquet
        state, lowdim = np.asarray(obs["state"], np.float32), None
    else:
        state = _concat(obs, STATE_KEYS, where)
        lowdim = _concat(obs, LOWDIM_KEYS, where) if "interest_states" in obs else None
    imgs = {name: np.asarray(obs[key]) for key, name in CAMERA_KEYS.items() if key in obs}
    return Observation(images=imgs, state=state, lowdim=lowdim, instruction=instruction)


LABEL_KEY = "expert_label"  # obs key of on-policy rollouts: the expert's chunk [H, A] from every visited state


def expert_chunk(ep: Episode, t: int, chunk_len: int) -> np.ndarray:
    """The chunk to learn at step t [H, A]: in an on-policy rollout the expert's label from that
    state (what should have been done there, not what the policy did); in a demonstration the
    recorded a[t:t+H]. Past the end of either, the last action repeats (the robot holds still)."""
    if LABEL_KEY in ep.obs:
        label = np.asarray(ep.obs[LABEL_KEY][t], np.float32)  # [H_label, A]
        return label[np.minimum(np.arange(chunk_len), len(label) - 1)]
    idx = np.minimum(np.arange(t, t + chunk_len), ep.length - 1)
    return ep.actions[idx].astype(np.float32)


def episode_windows(
    episodes: Sequence[Episode],
    chunk_len: int,
    stride: int = 1,
    images: bool = False,
    failed_steps: int | None = None,
) -> Windows:
    """Every stride-th step of every episode as (observation, expert chunk) training windows.

    failed_steps = K keeps only steps t < K of an on-policy rollout that failed: a failing policy
    spends its last steps in states the expert cannot finish from either (an arm stretched to a
    joint limit, the object knocked over), so their labels are not worth learning."""
    if chunk_len < 1 or stride < 1:
        raise ValueError(f"chunk_len and stride must be >= 1, got {chunk_len}, {stride}")
    if failed_steps is not None and failed_steps < 1:
        raise ValueError(f"failed_steps must be >= 1 (or None: every step), got {failed_steps}")
    obs, chunks, ep_idx, steps = [], [], [], []
    for e, ep in enumerate(episodes):
        labels = ep.obs.get(LABEL_KEY)
        end = ep.length
        if failed_steps is not None and labels is not None and not bool(np.asarray(ep.dones).any()):
            end = min(end, failed_steps)
        for t in range(0, end, stride):
            if labels is not None and not np.isfinite(labels[t]).all():
                continue  # an on-policy step the expert did not label: nothing to learn there
            obs.append(step_observation(ep, t, images=images))
            chunks.append(expert_chunk(ep, t, chunk_len))
            ep_idx.append(e)
            steps.append(t)
    if not obs:
        raise ValueError("no episodes (or only empty ones) to make windows from")
    return Windows(
        observations=obs,
        chunks=np.stack(chunks),  # [N, H, A]
        episode=np.asarray(ep_idx, np.int64),
        step=np.asarray(steps, np.int64),
    )


def _concat(obs: dict[str, np.ndarray], keys: Sequence[str], where: str) -> np.ndarray:
    missing = [k for k in keys if k not in obs]
    if missing:
        raise RolloutFormatError(f"{where}: obs key(s) {missing} needed for the policy input are missing")
    return np.concatenate([np.asarray(obs[k], np.float32).reshape(-1) for k in keys])


def load_episodes(
    paths: Sequence[str], demos: Sequence[int] | None = None, images: bool = False
) -> list[Episode]:
    """Episodes from LIBERO .hdf5 files, LeRobot .parquet files and LeRobot v3 dataset directories;
    `demos` picks demo_i of every HDF5 file."""
    from energy_rerank.rollouts.hdf5 import IMAGE_OBS_KEYS, STANDARD_OBS_KEYS, iter_hdf5
    from energy_rerank.rollouts.lerobot_v3 import is_lerobot_v3, read_lerobot_v3
    from energy_rerank.rollouts.parquet import read_lerobot_parquet

    wanted = None if demos is None else {f"demo_{i}" for i in demos}
    keys = [*STANDARD_OBS_KEYS, "interest_states", "object_states", LABEL_KEY, *(IMAGE_OBS_KEYS if images else ())]
    episodes: list[Episode] = []
    for path in map(str, paths):
        if path.endswith(".parquet"):
            episodes += read_lerobot_parquet([path], load_images=images)
        elif is_lerobot_v3(path):  # a dataset directory
            episodes += read_lerobot_v3(path, load_images=images)
        else:
            episodes += [e for e in iter_hdf5(path, obs_keys=keys) if wanted is None or e.name in wanted]
    if not episodes:
        raise ValueError(f"no episodes selected from {list(paths)} (demos={demos})")
    return episodes


def load_windows(
    paths: Sequence[str],
    chunk_len: int,
    demos: Sequence[int] | None = None,
    stride: int = 1,
    images: bool = False,
    failed_steps: int | None = None,
) -> tuple[Windows, list[str]]:
    """Training/evaluation windows from rollout files, and the task label of every window."""
    episodes = load_episodes(paths, demos, images)
    windows = episode_windows(episodes, chunk_len, stride=stride, images=images, failed_steps=failed_steps)
    return windows, [episodes[int(e)].task for e in windows.episode]
