"""Memory of the in-batch B x B energy loss: shared context (ours) vs the seed's context copy.

For each batch size B this measures, for one forward + backward of the B x B matrix:
  ctx_elems     elements entering the context projection (state_linear): B*S*D for the shared
                path, B*B*S*D for the seed's `expand(B, B, S, D)` copy;
  ctx_saved_MB  bytes autograd saves for backward inside the context encoder;
  saved_MB      bytes autograd saves for backward in the whole loss (the activation memory;
                its non-context part is B x B x H query rows on both paths, inherent to the matrix).

    .venv/bin/python scripts/loss_memory.py --sizes 2 4 8 16 32 --seed-max 16 --json out.json

Dims default to the seed's context (D_h 4096, S 300 is large on a CPU; the defaults are
smaller but keep D >> hidden so the context part dominates, as it does in the seed).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.training.losses import seed_copy_energy_matrix


@contextmanager
def saved_bytes(counter: dict[str, int], key: str):
    def pack(t: torch.Tensor) -> torch.Tensor:
        counter[key] = counter.get(key, 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def measure(model: EnergyModel, b: int, s: int, fn: Callable[..., torch.Tensor]) -> dict[str, float]:
    torch.manual_seed(b)
    hidden = torch.randn(b, s, model.config.context_dim)
    valid = torch.ones(b, s, dtype=torch.bool)
    actions = torch.randn(b, model.config.chunk_len, model.config.action_dim)
    counts: dict[str, int] = {}
    elems: list[int] = []

    def pre(_m, args):
        elems.append(args[0].numel())

    ctx_counter: dict[str, int] = {}
    orig = model.state_linear.forward

    def wrapped(x):
        with saved_bytes(ctx_counter, "ctx"):
            return orig(x)

    model.state_linear.forward = wrapped  # type: ignore[method-assign]
    h = model.state_linear.register_forward_pre_hook(pre)
    try:
        with saved_bytes(counts, "all"):
            matrix = fn(model, hidden, valid, actions)  # [B, B]
            loss = F.cross_entropy(-matrix, torch.arange(b))
        loss.backward()
    finally:
        h.remove()
        model.state_linear.forward = orig  # type: ignore[method-assign]
    return {
        "ctx_elems": float(sum(elems)),
        "ctx_saved_MB": ctx_counter.get("ctx", 0) / 2**20,
        "saved_MB": (counts.get("all", 0) + ctx_counter.get("ctx", 0)) / 2**20,  # inner hooks shadow outer
    }


def shared(model: EnergyModel, hidden, valid, actions) -> torch.Tensor:
    return model.energy_matrix(model.encode_context(hidden, valid), actions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="batch sizes B")
    ap.add_argument("--seed-max", type=int, default=16, help="largest B run through the seed's O(B^2) copy")
    ap.add_argument("--context-dim", type=int, default=512, help="D_h")
    ap.add_argument("--tokens", type=int, default=64, help="S")
    ap.add_argument("--hidden", type=int, default=64, help="energy head width")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()
    model = EnergyModel(EnergyConfig(context_dim=args.context_dim, hidden=args.hidden, heads=4)).train()
    rows = []
    print(f"{'B':>4} {'path':>7} {'ctx_elems':>12} {'ctx_saved_MB':>13} {'saved_MB':>9}")
    for b in args.sizes:
        for name, fn in (("shared", shared), ("seed", seed_copy_energy_matrix)):
            if name == "seed" and b > args.seed_max:
                continue
            r = {"B": b, "path": name, **measure(model, b, args.tokens, fn)}
            rows.append(r)
            print(f"{b:>4} {name:>7} {r['ctx_elems']:>12.0f} {r['ctx_saved_MB']:>13.2f} {r['saved_MB']:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
