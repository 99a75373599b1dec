"""`load_policy(path)`: any policy bundle directory -> a Proposer, by the bundle's `kind`.

Kinds: "reference_policy" (ReferenceVLA, written by `energy-rerank train-policy`),
"hf_adapter" (HFAdapter: a local text transformers checkpoint + an action head), "pi0"
(PI0Proposer: a local transformers pi0, candidates drawn by flow matching) and "image_vla"
(ImageVLA: a local image-text checkpoint + an L1 action head, read the OpenVLA-OFT way).
`energy-rerank policy-bundle` writes the last two from a checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from energy_rerank.checkpoint import BundleError, read_bundle_meta
from energy_rerank.policy.base import Proposer

POLICY_KINDS = ("reference_policy", "hf_adapter", "pi0", "image_vla")


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Proposer:
    """Read a policy bundle (weights, config, statistics) and return it ready to propose (eval mode)."""
    kind = read_bundle_meta(path).get("kind")
    if kind == "reference_policy":
        from energy_rerank.policy.reference import ReferenceVLA

        return ReferenceVLA.load(path, device)
    if kind == "hf_adapter":
        from energy_rerank.policy.hf_adapter import HFAdapter

        return HFAdapter.load(path, device)
    if kind == "pi0":
        from energy_rerank.policy.pi0 import PI0Proposer

        return PI0Proposer.load(path, device)
    if kind == "image_vla":
        from energy_rerank.policy.image_vla import ImageVLA

        return ImageVLA.load(path, device)
    raise BundleError(f"{path}: bundle kind {kind!r} is not a policy; expected one of {POLICY_KINDS}")
