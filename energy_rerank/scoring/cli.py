"""`energy-rerank export`: write an energy bundle's head as ONNX and check it against torch."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

CHECK_SHAPES = ((1, 1), (2, 5), (4, 16))  # (B, N) pairs the exported file is checked on


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export the energy head to ONNX (dynamic B, N and S)",
        description=(
            "Export an energy bundle's head (hidden [B,S,D], valid [B,S] bool, candidates [B,N,H,A] "
            "-> energies [B,N]) to ONNX with dynamic B, N and S, then run it through onnxruntime "
            "on random inputs and report the largest difference from the torch model."
        ),
    )
    p.add_argument("--onnx", required=True, type=Path, metavar="OUT", help="ONNX file to write")
    p.add_argument("--energy", required=True, type=Path, metavar="BUNDLE", help="energy bundle directory")
    p.add_argument("--steps", type=int, default=None, help="H of the candidates (default: the model's chunk_len)")
    p.add_argument(
        "--action-width",
        type=int,
        default=None,
        help="A of the candidates as sent (default: action_offset + action_dim; pi0 sends 32)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from energy_rerank.energy import EnergyModel
    from energy_rerank.scoring.inputs import random_inputs
    from energy_rerank.scoring.onnx_export import OnnxScorer, export_onnx
    from energy_rerank.scoring.torch_scorer import TorchScorer

    model = EnergyModel.from_pretrained(args.energy).float()
    path = export_onnx(model, args.onnx, action_width=args.action_width, steps=args.steps, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.no_check:
        return 0
    c = model.config
    onnx_scorer, torch_scorer = OnnxScorer(path), TorchScorer(model)
    worst = 0.0
    for b, n in CHECK_SHAPES:
        hidden, valid, cand = random_inputs(
            b, n, 11, c.context_dim, onnx_scorer.steps, onnx_scorer.action_width, torch.float32, torch.device("cpu")
        )
        diff = (onnx_scorer.score(hidden, valid, cand) - torch_scorer.score(hidden, valid, cand)).abs().max()
        worst = max(worst, float(diff))
        print(f"  B={b:<3} N={n:<3} max |onnxruntime - torch| = {float(diff):.2e}")
    if worst > 1e-4:
        print(f"FAILED: onnxruntime differs from torch by {worst:.2e} (> 1e-4)")
        return 1
    return 0
