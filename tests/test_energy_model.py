"""EnergyModel: shared-context scoring equals the seed's pairwise form; no per-candidate context copy."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from energy_rerank import EnergyConfig, EnergyModel
from energy_rerank.energy import NonFiniteError

SMALL = EnergyConfig(context_dim=48, hidden=64, heads=4, chunk_len=6)


def _inputs(b: int, s: int, n: int, h: int, a: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, s, SMALL.context_dim, generator=g)
    valid = torch.rand(b, s, generator=g) > 0.4
    valid[:, -1] = True  # every context keeps at least one token
    valid[0, : s // 2] = False  # a heavily padded row
    actions = torch.randn(b, n, h, a, generator=g)
    return hidden, valid, actions


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("b,s,n,h", [(3, 13, 5, 6), (1, 7, 1, 1), (2, 30, 3, 4)])
def test_score_equals_pairwise_forward(b: int, s: int, n: int, h: int, residual: bool) -> None:
    torch.manual_seed(0)
    model = EnergyModel(EnergyConfig(**{**SMALL.__dict__, "action_residual": residual})).eval()
    hidden, valid, actions = _inputs(b, s, n, h)
    with torch.no_grad():
        energies = model.score(model.encode_context(hidden, valid), actions)  # [B, N]
        for j in range(n):
            pairwise = model(hidden, actions[:, j], valid)  # [B], nn.MultiheadAttention path
            torch.testing.assert_close(energies[:, j], pairwise, rtol=0, atol=1e-5)
    assert energies.shape == (b, n)


def test_padding_is_respected() -> None:
    """Changing a masked-out token must not change any energy; changing a valid one must."""
    torch.manual_seed(1)
    model = EnergyModel(SMALL).eval()
    hidden, valid, actions = _inputs(2, 11, 4, 6)
    with torch.no_grad():
        e0 = model.score(model.encode_context(hidden, valid), actions)
        masked = (~valid[0]).nonzero()[0, 0]
        h2 = hidden.clone()
        h2[0, masked] = 100.0 * torch.randn(SMALL.context_dim)
        e1 = model.score(model.encode_context(h2, valid), actions)
        torch.testing.assert_close(e0, e1, rtol=0, atol=1e-6)
        h3 = hidden.clone()
        h3[0, valid[0].nonzero()[0, 0]] = 5.0 * torch.randn(SMALL.context_dim)
        e2 = model.score(model.encode_context(h3, valid), actions)
    assert not torch.allclose(e0[0], e2[0])


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


def test_score_never_copies_context_per_candidate() -> None:
    """No op inside score() outputs a context-sized tensor per candidate ([B*N, S, width] or [B, N, S, width])."""
    b, s, n, h = 2, 17, 9, 6
    model = EnergyModel(SMALL).eval()
    hidden, valid, actions = _inputs(b, s, n, h)
    seen_ctx: list[tuple[int, ...]] = []
    hook = model.state_linear.register_forward_pre_hook(lambda m, inp: seen_ctx.append(tuple(inp[0].shape)))
    rec = _ShapeRecorder()
    with torch.no_grad(), rec:
        model.score(model.encode_context(hidden, valid), actions)
    hook.remove()
    assert seen_ctx == [(b, s, SMALL.context_dim)], "context projection must run once per context"
    widths = {SMALL.context_dim, SMALL.hidden, SMALL.hidden // SMALL.heads}
    offenders = [
        (f, shp)
        for f, shp in rec.shapes
        if len(shp) >= 3 and shp[-1] in widths and s in shp[:-1] and _numel(shp[:-1]) >= b * n * s
    ]
    assert not offenders, f"per-candidate context copies: {offenders[:5]}"
    # The recorder does see the seed's copy when it is made, so the check above can fail:
    rec2 = _ShapeRecorder()
    with torch.no_grad(), rec2:
        rep = hidden.unsqueeze(1).expand(b, n, s, SMALL.context_dim).reshape(b * n, s, -1)
        model(rep, actions.reshape(b * n, h, 7), valid.repeat_interleave(n, 0))
    assert any(shp == (b * n, s, SMALL.hidden) for _, shp in rec2.shapes)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def test_sigmoid_bounded_softplus_unbounded() -> None:
    torch.manual_seed(2)
    hidden, valid, actions = _inputs(2, 9, 64, 6)
    spread = {}
    for act in ("sigmoid", "softplus"):
        model = EnergyModel(EnergyConfig(**{**SMALL.__dict__, "activation": act})).eval()
        with torch.no_grad():
            model.prediction_head.fc2.weight.mul_(3.0)  # widen raw outputs without float saturation
            e = model.score(model.encode_context(hidden, valid), actions * 5)
        spread[act] = float(e.max() - e.min())
        if act == "sigmoid":
            assert float(e.min()) > 0.1 and float(e.max()) < 2.1
        else:
            assert float(e.min()) > 0
    assert spread["sigmoid"] > 0.1 and spread["softplus"] > 0.1
    sig = EnergyModel(EnergyConfig(**{**SMALL.__dict__, "activation": "sigmoid"}))
    soft = EnergyModel(EnergyConfig(**{**SMALL.__dict__, "activation": "softplus"}))
    raw = torch.tensor([-1e6, -10.0, 0.0, 10.0, 1e6])
    assert float(sig.activate(raw).min()) >= 0.1 and float(sig.activate(raw).max()) <= 2.1
    assert float(soft.activate(raw).max()) > 1e4  # no ceiling: grows linearly with the raw score
    assert float(soft.activate(raw).min()) > 0


def test_action_slice_reads_configured_dims() -> None:
    """pi0 pads actions to 32 dims: only dims [offset, offset + action_dim) are scored."""
    cfg = EnergyConfig(**{**SMALL.__dict__, "action_offset": 0, "action_dim": 7})
    model = EnergyModel(cfg).eval()
    hidden, valid, actions = _inputs(2, 9, 3, 6)
    padded = torch.cat([actions, torch.randn(2, 3, 6, 25)], -1)  # [B, N, H, 32]
    with torch.no_grad():
        ctx = model.encode_context(hidden, valid)
        torch.testing.assert_close(model.score(ctx, padded), model.score(ctx, actions))
        with pytest.raises(ValueError, match="reads dims"):
            model.score(ctx, actions[..., :5])


def test_finite_checks_in_training_only() -> None:
    model = EnergyModel(SMALL)
    hidden, valid, actions = _inputs(2, 9, 3, 6)
    hidden[0, 0, 0] = float("nan")
    valid[0, 0] = True
    model.train()
    with pytest.raises(NonFiniteError, match="hidden"):
        model.score(model.encode_context(hidden, valid), actions)
    model.eval()  # serving: no sync, no raise (the reranker handles non-finite energies)
    with torch.no_grad():
        model.score(model.encode_context(hidden, valid), actions)
    model.debug_checks = True
    with pytest.raises(NonFiniteError):
        model.score(model.encode_context(hidden, valid), actions)


def test_bad_shapes_are_named() -> None:
    model = EnergyModel(SMALL).eval()
    with pytest.raises(ValueError, match=r"hidden must be \[B, S, 48\]"):
        model.encode_context(torch.randn(2, 5, 47))
    ctx = model.encode_context(torch.randn(2, 5, 48))
    with pytest.raises(ValueError, match="actions must be"):
        model.score(ctx, torch.randn(3, 4, 6, 7))
    model.train()
    with pytest.raises(ValueError, match="at least one valid token"):
        model.encode_context(torch.randn(2, 5, 48), torch.zeros(2, 5, dtype=torch.bool))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        EnergyConfig(hidden=30, heads=8)
    with pytest.raises(ValueError, match="activation"):
        EnergyConfig(activation="tanh")  # type: ignore[arg-type]
