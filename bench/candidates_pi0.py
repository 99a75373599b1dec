"""Candidate generation for pi0: N flow-matching draws from one shared prefix pass against N
separate `sample_actions` calls (each its own prefix pass), in the same run.

    python bench/candidates_pi0.py                      # tiny random pi0 on the CPU, N = 1 16 64
    python bench/candidates_pi0.py --checkpoint DIR --device cuda --dtype bfloat16 --image-size 224

Without --checkpoint a tiny random pi0 (hidden 32, 2 layers, 32 px images; energy_rerank.policy.tiny)
is written to a temporary directory. Prints a table (median of --repeats, after one warm-up; the
two ways are timed alternately, so both see the same machine load) and
writes it as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from energy_rerank.policy.base import Observation
from energy_rerank.policy.pi0 import Pi0Config, PI0Proposer, load_checkpoint, read_checkpoint_config
from energy_rerank.policy.tiny import write_tiny_pi0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="pi0 checkpoint directory (default: a tiny random one)")
    p.add_argument("--ns", type=int, nargs="+", default=[1, 16, 64], help="candidate counts N")
    p.add_argument("--batch", type=int, default=1, help="observations per call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per setting (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    return p.parse_args(argv)


def _time_pair(a, b, repeats: int, device: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Median seconds of a() and b(), timed alternately so both see the same machine load."""
    a(), b()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or write_tiny_pi0(Path(tmp) / "pi0")
        hf = read_checkpoint_config(ckpt)
        model, tokenizer = load_checkpoint(Path(ckpt), args.dtype, args.device)
        side = int(hf.vlm_config.vision_config.image_size)
        config = Pi0Config(
            checkpoint=str(ckpt), hidden_size=int(hf.vlm_config.text_config.hidden_size), chunk_len=int(hf.chunk_size),
            state_dim=0, image_size=(side, side), num_steps=int(hf.num_inference_steps), dtype=args.dtype,
        )  # fmt: skip
        policy = PI0Proposer(config, model, tokenizer)
        rng = np.random.default_rng(0)
        obs = [
            Observation(images={c: rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for c in config.cameras},
                        instruction="put the bowl on the plate")  # fmt: skip
            for _ in range(args.batch)
        ]
        seeds = list(range(args.batch))
        rows = []
        print(f"pi0 {'tiny random' if args.checkpoint is None else ckpt}: D={config.hidden_size}, "
              f"{config.num_steps} steps, batch {args.batch}, {args.device} {args.dtype}")  # fmt: skip
        print(f"{'N':>4}  {'shared prefix (ms)':>18}  {'N separate calls (ms)':>21}  {'ratio':>6}")
        for n in args.ns:
            inputs = policy.build_inputs(obs)
            noise = policy.draw_noise(seeds, n).to(args.device, policy.dtype)

            def shared(n: int = n) -> None:
                policy.propose_draws(obs, n, seeds)

            def separate(noise: torch.Tensor = noise, inputs: dict = inputs) -> None:  # type: ignore[type-arg]
                with torch.no_grad():
                    for j in range(noise.shape[1]):
                        policy.model.sample_actions(**inputs, noise=noise[:, j], num_steps=config.num_steps)

            t_shared, t_separate = _time_pair(shared, separate, args.repeats, args.device)
            row = {"n": n, "batch": args.batch, "shared_ms": t_shared * 1e3, "separate_ms": t_separate * 1e3,
                   "ratio": t_separate / t_shared, "device": args.device, "dtype": args.dtype}  # fmt: skip
            rows.append(row)
            print(f"{n:>4}  {row['shared_ms']:>18.1f}  {row['separate_ms']:>21.1f}  {row['ratio']:>5.1f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
