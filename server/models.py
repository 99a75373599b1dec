"""Bundles on disk -> the core Reranker the server delegates to."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from energy_rerank.candidates import CandidateSampler
from energy_rerank.checkpoint import (
    CONFIG_FILE,
    SELECTION_FILE,
    WEIGHTS_FILE,
    BundleError,
    HeadRecord,
    read_head_record,
)
from energy_rerank.energy import EnergyModel
from energy_rerank.normalize import STATS_FILE
from energy_rerank.policy.base import Observation, PolicyDescription
from energy_rerank.policy.loading import load_policy
from energy_rerank.reranker import Reranker, SelectParams
from energy_rerank.scoring.backends import make_scorer
from energy_rerank.scoring.cuda_graphs import GraphedScorer
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import quote

log = logging.getLogger(__name__)

FULL_HASH_LIMIT = 256 * 2**20  # weights files up to this size are hashed in full for the version
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX: a longer bundle path cannot be opened


def load_reranker(config: ServerConfig) -> Reranker:
    for what, path in (("policy", config.policy_path), ("energy head", config.energy_path)):
        if not (Path(path) / CONFIG_FILE).is_file():
            raise BundleError(
                f"{what} bundle not found at {path} (no {CONFIG_FILE}); pass --{what.split()[0]} or build "
                "the embedded default as docs/serving.md explains"
            )
    proposer = load_policy(config.policy_path, config.device)
    energy = EnergyModel.from_pretrained(config.energy_path, map_location=config.device)
    check_compatible(proposer.description, energy, config.policy_path, config.energy_path)
    record = read_head_record(config.energy_path)
    margin = switch_margin_for(config, record)
    version = (
        f"{proposer.description.name}@{bundle_digest(config.policy_path)}"
        f"+energy@{bundle_digest(config.energy_path)}"
    )
    return Reranker(
        proposer,
        make_scorer(
            energy,
            config.backend,
            onnx_path=str(config.onnx_path) if config.onnx_path else None,
            fp32_precision=config.fp32_precision,
            chains=config.chains,
        ),
        CandidateSampler.for_policy(proposer, record.with_sampler(config.sigmas, config.gripper_mode, config.layer_candidates)),
        model_version=version,
        max_candidates=config.max_candidates,
        switch_margin=margin,
        switch_rates=record.switch_rates,
    )


def with_energy_head(current: Reranker, energy_path: str | Path, config: ServerConfig) -> Reranker:
    """The serving reranker with another energy head: same policy and statistics (the policy's,
    which normalise the candidates the head scores); the new head's scorer, sampler, margin and version."""
    if config.backend == "onnxruntime":
        raise BundleError("the onnxruntime backend scores an exported file; re-export and restart instead")
    if len(str(energy_path)) > MAX_PATH_CHARS:  # resolving would stat each of its components first
        raise BundleError(f"energy head bundle path {quote(str(energy_path))} is longer than {MAX_PATH_CHARS}")
    try:  # the path comes from a caller (ReloadEnergyHead): it may not even be a possible path
        path = Path(energy_path).resolve()  # a symlink flipped during the load must not mix two bundles
        found = (path / CONFIG_FILE).is_file()
    except (OSError, ValueError) as e:  # name too long, NUL byte, ...
        raise BundleError(f"energy head bundle path {quote(str(energy_path))} unusable: {type(e).__name__}") from None
    if not found:
        raise BundleError(f"energy head bundle not found at {quote(str(energy_path))} (no {CONFIG_FILE})")
    energy = EnergyModel.from_pretrained(path, map_location=config.device)
    check_compatible(current.proposer.description, energy, config.policy_path, path)
    record = read_head_record(path)
    margin = switch_margin_for(config, record)
    policy_part = current.model_version.rsplit("+energy@", 1)[0]
    return Reranker(
        current.proposer,
        make_scorer(energy, config.backend, fp32_precision=config.fp32_precision, chains=config.chains),
        # candidates the way this head was trained to rank them, unless the server's flags override
        CandidateSampler.for_policy(current.proposer, record.with_sampler(config.sigmas, config.gripper_mode, config.layer_candidates)),
        stats=current.stats,
        model_version=f"{policy_part}+energy@{bundle_digest(path)}",
        max_candidates=current.max_candidates,
        switch_margin=margin,
        switch_rates=record.switch_rates,
    )


def switch_margin_for(config: ServerConfig, record: HeadRecord) -> float:
    """The server's flag if set, else the margin calibrated for this head, else 0 (plain argmin)."""
    if config.switch_margin is not None:
        return config.switch_margin
    return 0.0 if record.switch_margin is None else record.switch_margin


def describe_switch_margin(margin: float) -> str:
    """What the margin served with means for the robot, for the start-up line."""
    if math.isinf(margin):
        return ("switch margin inf: every answer is the policy's own chunk (candidates are still scored "
                "for the energies in the response; --default-candidates 1 skips that)")  # fmt: skip
    return "switch margin 0: plain argmin" if margin == 0 else f"switch margin {margin:g}"


def warm_up(reranker: Reranker, max_batch: int = 1) -> None:
    """One blank request through every stage, so the first robot is not the one paying for lazy
    initialisation (allocator, kernels, autotuning).

    With CUDA graphs, every (B, N) bucket up to max_batch x max_candidates is captured here too:
    a bucket first met by a request would stall it for the capture and autotuning (seconds).
    """
    d = reranker.proposer.description
    h, w = d.image_size or (32, 32)
    obs = Observation(
        images={cam: np.zeros((h, w, 3), np.uint8) for cam in d.cameras},
        state=np.zeros(d.state_dim, np.float32) if d.state_dim else None,
        lowdim=np.zeros(d.lowdim_dim, np.float32) if d.lowdim_dim else None,
    )
    reranker.select([obs], [SelectParams(num_candidates=min(8, reranker.max_candidates), seed=0)])
    graphed = getattr(reranker.scorer, "impl", None)
    if not isinstance(graphed, GraphedScorer):
        return
    t0 = time.perf_counter()
    batches = [b for b in graphed.b_buckets if b <= max_batch]
    sizes = [n for n in graphed.n_buckets if n <= reranker.max_candidates]
    for b in batches:
        for n in sizes:
            reranker.select([obs] * b, [SelectParams(num_candidates=n, seed=0)] * b)
    log.info("captured %d CUDA graphs (B %s x N %s) in %.1f s", len(graphed.graphs), batches, sizes,
             time.perf_counter() - t0)  # fmt: skip


def check_compatible(
    desc: PolicyDescription, energy: EnergyModel, policy_path: str | Path, energy_path: str | Path
) -> None:
    """The energy head must read this policy's context and chunks; say which bundle disagrees."""
    c = energy.config
    problems = []
    if c.context_dim != desc.hidden_size:
        problems.append(f"energy context_dim {c.context_dim} != policy hidden_size {desc.hidden_size}")
    if c.chunk_len < desc.chunk_len:
        problems.append(f"energy chunk_len {c.chunk_len} < policy chunk_len {desc.chunk_len}")
    if c.action_offset + c.action_dim > desc.action_dim:
        problems.append(f"energy scores action dims [{c.action_offset}, {c.action_offset + c.action_dim}) "
                        f"but the policy has {desc.action_dim}")  # fmt: skip
    if problems:
        raise BundleError(f"{energy_path} does not fit {policy_path}: " + "; ".join(problems))


def bundle_digest(path: str | Path) -> str:
    """Short content hash of a bundle: its version string changes whenever its weights do,
    including those of a transformers checkpoint the bundle points at (hf_adapter, pi0, image VLAs)."""
    path = Path(path)
    config = (path / CONFIG_FILE).read_bytes()
    h = hashlib.sha256(config)
    _hash_file(h, path / WEIGHTS_FILE)
    for name in (STATS_FILE, SELECTION_FILE):  # other statistics or margin = other answers
        if (path / name).is_file():
            h.update((path / name).read_bytes())  # a training run's files beside the head do not count
    fields = json.loads(config).get("config", {})
    for key in EXTERNAL_KEYS:
        ref = fields.get(key)
        external = (path / ref).resolve() if isinstance(ref, str) else None
        if external is not None and external.is_dir():
            for f in sorted(p for p in external.iterdir() if p.is_file()):
                h.update(f.name.encode())
                _hash_file(h, f)
    return h.hexdigest()[:12]


EXTERNAL_KEYS = ("backbone", "checkpoint")  # policy-bundle config fields naming a transformers directory


def _hash_file(h: Any, f: Path) -> None:
    """A file's size and content into h; past FULL_HASH_LIMIT its first and last MiB (weights of a
    multi-GB checkpoint change there too, and hashing them whole would delay every start-up)."""
    size = f.stat().st_size
    h.update(str(size).encode())
    with f.open("rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(fh.read(1 << 20))
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))
