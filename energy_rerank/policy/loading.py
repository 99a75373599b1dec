"""`load_policy(path)`: any policy bundle directory -> a Proposer, by the bundle's `kind`.

Kinds: "reference_policy" (ReferenceVLA, written by `energy-rerank train-policy`) and
"hf_adapter" (HFAdapter: a local transformers checkpoint + an action head).
"""

from __future__ import annotations

from pathlib import Path

import torch

from energy_rerank.checkpoint import BundleError, read_bundle_meta
from energy_rerank.policy.base import Proposer

POLICY_KINDS = ("reference_policy", "hf_adapter")


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Proposer:
    """Read a policy bundle (weights, config, statistics) and return it ready to propose (eval mode)."""
    kind = read_bundle_meta(path).get("kind")
    if kind == "reference_policy":
        from energy_rerank.policy.reference import ReferenceVLA

        return ReferenceVLA.load(path, device)
    if kind == "hf_adapter":
        from energy_rerank.policy.hf_adapter import HFAdapter

        return HFAdapter.load(path, device)
    raise BundleError(f"{path}: bundle kind {kind!r} is not a policy; expected one of {POLICY_KINDS}")
