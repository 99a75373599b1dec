"""The three mask conventions meet the core's one (valid: True = attend)."""

from __future__ import annotations

import pytest
import torch

from energy_rerank import EnergyConfig, EnergyModel
from energy_rerank.masks import (
    openvla_context_valid,
    padding_mask_from_valid,
    valid_from_padding_mask,
    valid_from_pi0_mask,
)

VALID = torch.tensor([[True, True, False, False], [True, False, True, False]])


def test_pytorch_padding_convention() -> None:
    pad = torch.tensor([[False, False, True, True], [False, True, False, True]])  # True = ignore
    assert torch.equal(valid_from_padding_mask(pad), VALID)
    assert torch.equal(padding_mask_from_valid(VALID), pad)
    assert torch.equal(valid_from_padding_mask(padding_mask_from_valid(VALID)), VALID)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.float32])
def test_pi0_convention(dtype: torch.dtype) -> None:
    pi0 = VALID.to(dtype)  # openpi: True/1 = valid, often stored as numbers
    out = valid_from_pi0_mask(pi0)
    assert out.dtype == torch.bool and torch.equal(out, VALID)


def test_core_convention_is_identity_and_rejects_non_binary() -> None:
    assert valid_from_pi0_mask(VALID) is VALID
    with pytest.raises(ValueError, match="0/1"):
        valid_from_pi0_mask(torch.tensor([[0.0, 0.5]]))


def test_openvla_layout() -> None:
    v = openvla_context_valid(num_patches=3, action_tokens=2, batch=2)
    assert v.tolist() == [[True, True, True, False, False, False]] * 2


def test_conventions_agree_inside_the_model() -> None:
    """Energies from a pi0 mask and from a PyTorch padding mask of the same tokens are identical."""
    model = EnergyModel(EnergyConfig(context_dim=16, hidden=32, heads=2, chunk_len=3)).eval()
    hidden, actions = torch.randn(2, 4, 16), torch.randn(2, 5, 3, 7)
    pad = padding_mask_from_valid(VALID)
    with torch.no_grad():
        e_pt = model.score(model.encode_context(hidden, valid_from_padding_mask(pad)), actions)
        e_pi = model.score(model.encode_context(hidden, valid_from_pi0_mask(VALID.float())), actions)
        e_seed = torch.stack([model(hidden, actions[:, j], VALID) for j in range(5)], 1)
    assert torch.equal(e_pt, e_pi)
    torch.testing.assert_close(e_pt, e_seed, rtol=0, atol=1e-5)
