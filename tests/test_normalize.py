"""Normalisation statistics: round trip through JSON, bounds mode, binary dims untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank import NormStats


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.normal(loc=[0, 1, 2, 3, 4, 5, 0], scale=[1, 2, 3, 0.5, 0.1, 1, 1], size=(500, 7))
    a[:, 6] = rng.choice([-1.0, 1.0], size=500)
    return a


@pytest.mark.parametrize("mode", ["bounds", "meanstd", "identity"])
def test_round_trip(mode: str, tmp_path: Path) -> None:
    st = NormStats.from_data(_data(), state=_data()[:, :5], binary_dims=(6,), action_mode=mode)  # type: ignore[arg-type]
    st.save(tmp_path)
    st2 = NormStats.load(tmp_path)
    assert st2 == st
    x = torch.tensor(_data()[:20], dtype=torch.float32)
    y = st2.normalize_actions(x)
    torch.testing.assert_close(st2.unnormalize_actions(y), x, rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, 6], x[:, 6])  # gripper stays binary


def test_bounds_map_quantiles_to_unit_range() -> None:
    st = NormStats.from_data(_data(), binary_dims=(6,))
    y = st.normalize_actions(torch.tensor(_data(), dtype=torch.float32))
    frac_inside = ((y[:, :6] >= -1) & (y[:, :6] <= 1)).float().mean()
    assert 0.95 < float(frac_inside) < 0.995
    lo, hi = st.action_bounds(normalized=True)
    assert bool((lo <= -1).all()) and bool((hi >= 1).all())


def test_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        NormStats.from_data(np.array([[np.nan, 1.0]]))
    st = NormStats.from_data(_data())
    with pytest.raises(ValueError, match="last dim 7"):
        st.normalize_actions(torch.zeros(3, 6))
