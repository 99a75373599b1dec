"""How much energy error does tf32 in the context's 4096-wide product alone cost? (CPU, no GPU)

Emulates tf32 operands (round to nearest at 10 mantissa bits, as `cvt.rna.tf32.f32`) in the folded
LayerNorm form the kernels use for the context's first layer (rstd * (x @ W' - mean * colsum) + b'),
everything else in fp32, and compares the energies with an fp64 reference at the #5 seed shapes
(B = 8, N = 64, S = 300, D_h = 4096, H = 8, A = 7). Also for hidden states shifted by +3 (the
folded mean term cancels) and with a few LLM-like outlier dimensions.

    .venv/bin/python scripts/tf32_emulation.py      # about a minute on 2 cores

Measured 2026-11-23: max relative error 3-4e-5 (random hidden), 3-5e-4 (+3 shift), 3-4e-5
(outliers), argmin agreeing everywhere; fp32 itself 2e-7. The 1e-3 line of issue #5 holds.
"""

from __future__ import annotations

import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.kernels.timing import random_inputs
from energy_rerank.nn import MLPResNet
from energy_rerank.scoring import TorchScorer


def tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest value with a 10-bit mantissa (ties away from zero)."""
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)


def max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((out.double() - ref).abs() / ref.abs().clamp_min(1e-6)).max())


def tf32_first_layer(sl: MLPResNet):  # type: ignore[no-untyped-def]
    """MLPResNet.forward with its LN + fc1 in the kernels' folded form, the product in tf32."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        ln, fc1 = sl.layer_norm1, sl.fc1
        w = fc1.weight * ln.weight[None, :]  # [hid, D]: W' = gamma * W
        b = fc1.bias + fc1.weight @ ln.bias
        mean = x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
        p = (tf32(x).double() @ tf32(w).double().T).float()  # exact sums of tf32 products
        y = sl.relu(rstd * (p - mean * w.sum(1)) + b)
        for block in sl.mlp_resnet_blocks:
            y = block(y)
        return sl.fc2(sl.layer_norm2(y))

    return forward


def run(seed: int, shift: float = 0.0, outliers: bool = False) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    model = EnergyModel(EnergyConfig()).eval()
    hidden, valid, cand = random_inputs(8, 64, 300, 4096, 8, 7, torch.float32, torch.device("cpu"), seed=seed)
    hidden = hidden + shift
    if outliers:
        hidden[..., :4] *= 100.0
    exact = EnergyModel(EnergyConfig()).double().eval()
    exact.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = TorchScorer(exact).score(hidden.double(), valid, cand.double())  # [B, N]
        fp32 = TorchScorer(model).score(hidden, valid, cand)
        model.state_linear.forward = tf32_first_layer(model.state_linear)  # type: ignore[method-assign]
        mixed = TorchScorer(model).score(hidden, valid, cand)
    agree = (mixed.argmin(1) == ref.argmin(1)).double().mean().item()
    return max_rel(fp32, ref), max_rel(mixed, ref), agree


def main() -> None:
    torch.set_num_threads(2)
    for label, kw in (("random", {}), ("+3 shift", {"shift": 3.0}), ("outliers", {"outliers": True})):
        for seed in (0, 1):
            fp32, mixed, agree = run(seed, **kw)
            print(f"{label:9} seed {seed}: fp32 {fp32:.1e}  tf32 context product {mixed:.1e}  argmin agree {agree:.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
