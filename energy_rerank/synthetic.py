"""A synthetic language-conditioned reaching task: tests, the quickstart, and reranking demos.

A scene holds K coloured targets (6-D poses) and an end effector (6-D pose + a gripper).
The instruction names one target by its colour ("pick up the blue block"); the expert reaches
for that target's pose, closes the gripper when it arrives, then lifts. So the right chunk
depends on the instruction *and* the state: an energy head that ignores either cannot rank
candidates.

Layout of `lowdim` (robot units):  [ee_pos 3, ee_rot 3, gripper 1, target_0 pose 6, ...]
`state` (proprio) is the first 7 of those. Actions (A = 7, LIBERO-like, in [-1, 1]):
[d_pos 3, d_rot 3, gripper] with gripper -1 = open, +1 = closed; dims 0-5 are scaled by
`pos_step` / `rot_step` per control step.

Everything is deterministic by seed: episode i of `episodes(n, seed)` depends only on
(seed, i), so a held-out split is just another seed.

    task = SyntheticTask(SyntheticConfig())
    train = task.windows(task.episodes(200, seed=0))   # Windows: observations + expert chunks
    obs = task.make_observation(lowdim, "reach the red block")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from energy_rerank.policy.base import Observation
from energy_rerank.policy.windows import Windows

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")  # target k is always COLOURS[k]
_RGB = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 80, 240], [235, 220, 40], [170, 60, 200], [40, 210, 220]], np.float32
)
ACTION_DIM = 7  # [d_pos 3, d_rot 3, gripper]
GRIPPER_DIM = 6  # the binary action dim
PROPRIO_DIM = 7  # ee pose 6 + gripper 1
POSE_DIM = 6  # a target's pose: position 3 + rotation 3
OPEN, CLOSED = -1.0, 1.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Scene, expert and rendering parameters of the synthetic task."""

    num_targets: int = 3  # K targets per scene (at most len(COLOURS))
    chunk_len: int = 8  # H: expert chunk length (OpenVLA-OFT's LIBERO chunk)
    episode_len: int = 24  # T: windows per episode (the trajectory is simulated H - 1 steps longer)
    pos_step: float = 0.1  # metres per step at |action| = 1 (translation dims)
    rot_step: float = 0.1  # radians per step at |action| = 1 (rotation dims)
    grasp_radius: float = 0.1  # the expert closes the gripper within this distance of its target
    lift_height: float = 1.0  # height the expert lifts a grasped target to
    min_separation: float = 0.4  # minimum distance between targets, so "the red one" is unambiguous
    action_noise: float = 0.02  # std of the noise on the executed (recorded) motion dims 0-5
    templates: tuple[str, ...] = (  # instruction templates; {name} becomes the colour word
        "move to the {name} block",
        "pick up the {name} block",
        "reach the {name} block",
    )
    image_size: int = 0  # side of a rendered top-down RGB image (0 = no images in observations)
    camera: str = "agentview"  # camera name of the rendered image in Observation.images

    def __post_init__(self) -> None:
        if not 1 <= self.num_targets <= len(COLOURS):
            raise ValueError(f"num_targets must be in [1, {len(COLOURS)}], got {self.num_targets}")
        if self.chunk_len < 1 or self.episode_len < 1:
            raise ValueError("chunk_len and episode_len must be >= 1")
        if not self.templates or any("{name}" not in t for t in self.templates):
            raise ValueError("every template must contain '{name}'")
        if self.image_size < 0:
            raise ValueError(f"image_size must be >= 0, got {self.image_size}")


@dataclass
class SyntheticEpisode:
    """One expert trajectory: T windows plus H - 1 extra steps so every window has a full chunk."""

    instruction: str  # e.g. "pick up the green block"
    target: int  # index of the named target
    lowdim: np.ndarray  # [T + H - 1, 7 + 6K] float32 scene state before each action
    actions: np.ndarray  # [T + H - 1, 7] float32 recorded actions


class SyntheticTask:
    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()

    # ------------------------------------------------------------------ sizes
    @property
    def lowdim_dim(self) -> int:
        return PROPRIO_DIM + POSE_DIM * self.config.num_targets

    @property
    def state_dim(self) -> int:
        return PROPRIO_DIM

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def chunk_len(self) -> int:
        return self.config.chunk_len

    @property
    def colours(self) -> tuple[str, ...]:
        return COLOURS[: self.config.num_targets]

    # ------------------------------------------------------------------ dynamics and expert
    def expert_action(self, lowdim: np.ndarray, target: int) -> np.ndarray:
        """The noise-free expert action [7] for one scene state: reach, close, then lift."""
        c = self.config
        ee, grip, tgt = lowdim[:6], lowdim[6], self._target_pose(lowdim, target)
        a = np.zeros(ACTION_DIM, np.float32)
        if grip > 0:  # holding it: lift straight up
            a[2] = np.clip((c.lift_height - ee[2]) / c.pos_step, -1, 1)
            a[GRIPPER_DIM] = CLOSED
        elif np.linalg.norm(tgt[:3] - ee[:3]) <= c.grasp_radius:  # arrived: close in place
            a[GRIPPER_DIM] = CLOSED
        else:  # reach: saturating proportional control toward the target pose
            a[:3] = np.clip((tgt[:3] - ee[:3]) / c.pos_step, -1, 1)
            a[3:6] = np.clip((tgt[3:] - ee[3:]) / c.rot_step, -1, 1)
            a[GRIPPER_DIM] = OPEN
        return a

    def step(self, lowdim: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Apply one action [7] to a scene state; a target inside a closed gripper moves with it."""
        c = self.config
        a = np.clip(np.asarray(action, np.float32), -1, 1)
        nxt = np.array(lowdim, np.float32, copy=True)
        delta = a[:3] * c.pos_step
        nxt[:3] += delta
        nxt[3:6] += a[3:6] * c.rot_step
        closed = a[GRIPPER_DIM] > 0
        nxt[6] = CLOSED if closed else OPEN
        if closed:
            for k in range(c.num_targets):
                p = PROPRIO_DIM + POSE_DIM * k
                if np.linalg.norm(lowdim[p : p + 3] - lowdim[:3]) <= c.grasp_radius + 1e-6:
                    nxt[p : p + 3] += delta
        return nxt

    def expert_chunk(self, lowdim: np.ndarray, target: int) -> np.ndarray:
        """The noise-free expert chunk [H, 7] from a scene state (closed-loop over H steps)."""
        out = np.zeros((self.chunk_len, ACTION_DIM), np.float32)
        s = np.asarray(lowdim, np.float32)
        for h in range(self.chunk_len):
            out[h] = self.expert_action(s, target)
            s = self.step(s, out[h])
        return out

    def is_success(self, lowdim: np.ndarray, target: int) -> bool:
        """The named target is held and lifted to within 0.1 of the lift height."""
        pose = self._target_pose(lowdim, target)
        return bool(lowdim[6] > 0 and pose[2] >= self.config.lift_height - 0.1)

    def target_of(self, instruction: str) -> int:
        """Which target an instruction names (the first colour word in it)."""
        for word in re.findall(r"[a-z]+", instruction.lower()):
            if word in self.colours:
                return self.colours.index(word)
        raise ValueError(f"instruction {instruction!r} names none of the targets {self.colours}")

    # ------------------------------------------------------------------ episodes
    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A random scene: ee pose in [-1, 1]^6 with the gripper open; separated targets on the table."""
        c = self.config
        s = np.zeros(self.lowdim_dim, np.float32)
        s[:6] = rng.uniform(-1, 1, 6)
        s[6] = OPEN
        placed: list[np.ndarray] = []
        while len(placed) < c.num_targets:
            pos = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 0)], np.float32)
            if all(np.linalg.norm(pos - q) >= c.min_separation for q in placed):
                placed.append(pos)
        for k, pos in enumerate(placed):
            p = PROPRIO_DIM + POSE_DIM * k
            s[p : p + 3] = pos
            s[p + 3 : p + 6] = rng.uniform(-1, 1, 3)
        return s

    def episode(self, seed: int, index: int = 0) -> SyntheticEpisode:
        """Episode `index` of stream `seed`: a function of (seed, index) only."""
        c = self.config
        rng = np.random.default_rng([seed, index])
        target = int(rng.integers(c.num_targets))
        instruction = c.templates[int(rng.integers(len(c.templates)))].format(name=COLOURS[target])
        steps = c.episode_len + c.chunk_len - 1
        lowdim = np.zeros((steps, self.lowdim_dim), np.float32)
        actions = np.zeros((steps, ACTION_DIM), np.float32)
        s = self.initial_state(rng)
        for t in range(steps):
            a = self.expert_action(s, target)
            a[:6] = np.clip(a[:6] + rng.normal(0, c.action_noise, 6), -1, 1)
            lowdim[t], actions[t] = s, a
            s = self.step(s, a)
        return SyntheticEpisode(instruction, target, lowdim, actions)

    def episodes(self, n: int, seed: int) -> list[SyntheticEpisode]:
        return [self.episode(seed, i) for i in range(n)]

    def windows(self, episodes: Sequence[SyntheticEpisode], stride: int = 1) -> Windows:
        """Every `stride`-th time step of every episode: observation + recorded chunk a[t:t+H]."""
        c = self.config
        obs: list[Observation] = []
        chunks, ep_idx, steps = [], [], []
        for e, ep in enumerate(episodes):
            for t in range(0, c.episode_len, stride):
                obs.append(self.make_observation(ep.lowdim[t], ep.instruction))
                chunks.append(ep.actions[t : t + c.chunk_len])
                ep_idx.append(e)
                steps.append(t)
        return Windows(
            observations=obs,
            chunks=np.stack(chunks).astype(np.float32),
            episode=np.asarray(ep_idx, np.int64),
            step=np.asarray(steps, np.int64),
        )

    def make_observation(self, lowdim: np.ndarray, instruction: str) -> Observation:
        """An Observation of a scene state: lowdim, proprio state, instruction (+ image if configured)."""
        lowdim = np.asarray(lowdim, np.float32)
        if lowdim.shape != (self.lowdim_dim,):
            raise ValueError(f"lowdim must be [{self.lowdim_dim}], got {lowdim.shape}")
        images = {self.config.camera: self.render(lowdim)} if self.config.image_size else {}
        return Observation(
            images=images, state=lowdim[:PROPRIO_DIM].copy(), lowdim=lowdim.copy(), instruction=instruction
        )

    # ------------------------------------------------------------------ rendering
    def render(self, lowdim: np.ndarray, size: int | None = None) -> np.ndarray:
        """Top-down uint8 [size, size, 3] view: targets as coloured squares (brighter = higher),
        the end effector as a white cross (grey when closed). Target rotations are not drawn."""
        n = size or self.config.image_size or 32
        img = np.zeros((n, n, 3), np.float32)
        half = max(1, n // 16)

        def pixel(xy: np.ndarray) -> tuple[int, int]:
            u = np.clip((xy + 1.2) / 2.4, 0, 1) * (n - 1)
            return int(round(u[1])), int(round(u[0]))  # (row, col): y down the rows

        for k in range(self.config.num_targets):
            pose = self._target_pose(lowdim, k)
            r, col = pixel(pose[:2])
            bright = float(np.clip(0.55 + 0.45 * (pose[2] + 1) / 2.2, 0.3, 1.0))
            img[max(0, r - half) : r + half + 1, max(0, col - half) : col + half + 1] = _RGB[k] * bright
        r, col = pixel(lowdim[:2])
        shade = 140.0 if lowdim[6] > 0 else 255.0
        img[max(0, r - 2 * half) : r + 2 * half + 1, col] = shade
        img[r, max(0, col - 2 * half) : col + 2 * half + 1] = shade
        return img.astype(np.uint8)

    def _target_pose(self, lowdim: np.ndarray, k: int) -> np.ndarray:
        p = PROPRIO_DIM + POSE_DIM * k
        return lowdim[p : p + POSE_DIM]
