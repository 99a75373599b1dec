"""How much energy error does single tf32 cost? Emulated on the CPU, no GPU.

Default: tf32 in the context's 4096-wide product alone. Operands rounded to nearest at 10
mantissa bits (as `cvt.rna.tf32.f32`) in the folded LayerNorm form the kernels use for the
context's first layer (rstd * (x @ W' - mean * colsum) + b'), everything else in fp32, against
an fp64 reference at the #5 seed shapes (B = 8, N = 64, S = 300, D_h = 4096, H = 8, A = 7); also
for hidden states shifted by +3 (the folded mean term cancels) and with a few LLM-like outlier
dimensions.

`--kernels`: the Triton scorer itself with fp32_precision="tf32", run by the interpreter with
every tf32 dot's operands truncated as Hopper's wgmma does (or rounded), LayerNorms folded
against unfolded (the default for single tf32), at B = 1 x N = 16 of the seed shapes.

    .venv/bin/python scripts/tf32_emulation.py              # about a minute on 2 cores
    .venv/bin/python scripts/tf32_emulation.py --kernels    # about 3 minutes

Measured 2026-11-23: context product alone, max relative error 3-4e-5 (random hidden), 3-5e-4
(+3 shift), 3-4e-5 (outliers), argmin agreeing everywhere; fp32 itself 2e-7. Kernels (weights
pre-rounded to tf32): folded 1.1e-4 truncated / 6.8e-5 rounded; unfolded 3.3e-5 / 2.4e-5. The
H100 measured 2.2e-2 for unfolded single tf32 at B = 8 x N = 64: truncation alone does not
explain the GPU's error.
"""

from __future__ import annotations

import argparse
import os

import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.kernels.timing import random_inputs
from energy_rerank.kernels.triton_support import to_tf32
from energy_rerank.nn import MLPResNet
from energy_rerank.scoring import TorchScorer


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
        p = (to_tf32(x.float()).double() @ to_tf32(w.float()).double().T).float()  # exact sums of tf32 products
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


def kernels(b: int = 1, n: int = 16, seed: int = 0) -> None:
    """The Triton scorer in single tf32 under the interpreter's Hopper emulation, folded or not."""
    from energy_rerank.kernels.folded_weights import FOLD_LN_MIN_K
    from energy_rerank.kernels.interpreter_tf32 import hopper_tf32
    from energy_rerank.kernels.triton_scorer import TritonScorer

    torch.manual_seed(seed)
    model = EnergyModel(EnergyConfig()).eval()
    hidden, valid, cand = random_inputs(b, n, 300, 4096, 8, 7, torch.float32, torch.device("cpu"), seed=seed)
    exact = EnergyModel(EnergyConfig()).double().eval()
    exact.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = TorchScorer(exact).score(hidden.double(), valid, cand.double())
    for label, fold in (("LayerNorms folded", FOLD_LN_MIN_K), ("unfolded (default)", None)):
        scorer = TritonScorer(model, fp32_precision="tf32", fold_ln_min_k=fold, chains="layered")
        for mode in ("truncate", "round"):
            with hopper_tf32(mode):
                err = max_rel(scorer.score(hidden, valid, cand), ref)
            print(f"kernels, {label:18} operands {mode:8}: max relative error {err:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", action="store_true", help="emulate the Triton scorer's tf32 dots instead")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.kernels:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton's import, which fixes the mode process-wide
        kernels()
        return
    for label, kw in (("random", {}), ("+3 shift", {"shift": 3.0}), ("outliers", {"outliers": True})):
        for seed in (0, 1):
            fp32, mixed, agree = run(seed, **kw)
            print(f"{label:9} seed {seed}: fp32 {fp32:.1e}  tf32 context product {mixed:.1e}  argmin agree {agree:.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
