"""`energy-rerank-client info|select|reload`: poke a running server from a shell; prints JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
import numpy as np

from energy_rerank_client.client import RerankClient
from energy_rerank_client.tensors import ImageLike

TOKEN_ENV = "ENERGY_RERANK_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energy-rerank-client", description=__doc__)
    p.add_argument("--target", default="127.0.0.1:50051", help="server address (default: %(default)s)")
    p.add_argument("--token-file", type=Path, help=f"file holding the bearer token (or set ${TOKEN_ENV})")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--ca", type=Path, help="PEM root certificate to trust (implies --tls)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per call in seconds (default: %(default)s)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="what the served model expects and produces")
    s = sub.add_parser("select", help="ask for one action chunk")
    s.add_argument("--image", action="append", default=[], metavar="CAMERA=FILE",
                   help="a PNG or JPEG file for a camera; repeat per camera")  # fmt: skip
    s.add_argument("--state", help="proprio state, comma-separated floats")
    s.add_argument("--lowdim", help="low-dim scene state, comma-separated floats")
    s.add_argument("--instruction", default="", help="language instruction")
    s.add_argument("--blank", action="store_true",
                   help="fill every input the model expects but was not given with zeros (smoke test)")  # fmt: skip
    s.add_argument("-n", "--num-candidates", type=int, help="N (default: the server's)")
    s.add_argument("--seed", type=int, help="fix the candidates")
    s.add_argument("--rule", choices=("argmin", "softmax"), default="argmin")
    s.add_argument("--temperature", type=float, default=0.0, help="softmax temperature (0 = 1.0)")
    s.add_argument("--switch-margin", type=float,
                   help="energy gain needed to replace the policy's own chunk (default: the server's)")  # fmt: skip
    s.add_argument("--candidates", action="store_true", help="also print all candidates")
    r = sub.add_parser("reload", help="swap the server's energy head without downtime (needs the token)")
    r.add_argument("path", nargs="?", default="",
                   help="energy-head bundle directory on the server (default: reload the current one)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV)
    root = args.ca.read_bytes() if args.ca else None
    with RerankClient(
        args.target, token=token, timeout=args.timeout, tls=args.tls, root_certificates=root
    ) as client:
        try:
            if args.command == "reload":
                out = vars(client.reload_energy_head(args.path))
            else:
                out = _info(client) if args.command == "info" else _select(client, args)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    print(json.dumps(out, indent=2))
    return 0


def _info(client: RerankClient) -> dict:
    info = client.info()
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(info).items() if k != "raw"}


def _select(client: RerankClient, args: argparse.Namespace) -> dict:
    images: dict[str, ImageLike] = {}
    for item in args.image:
        name, _, path = item.partition("=")
        images[name] = Path(path).read_bytes()
    state = _floats(args.state)
    lowdim = _floats(args.lowdim)
    if args.blank:
        info = client.info()
        h, w = info.image_size or (64, 64)
        for cam in info.cameras:
            images.setdefault(cam, np.zeros((h, w, 3), np.uint8))
        if state is None and info.state_dim:
            state = np.zeros(info.state_dim, np.float32)
        if lowdim is None and info.lowdim_dim:
            lowdim = np.zeros(info.lowdim_dim, np.float32)
    r = client.select(
        images, state, lowdim=lowdim, instruction=args.instruction, num_candidates=args.num_candidates,
        seed=args.seed, rule=args.rule, temperature=args.temperature, return_candidates=args.candidates,
        switch_margin=args.switch_margin,
    )  # fmt: skip
    out = {
        "chunk": r.chunk.tolist(),
        "index": r.index,
        "energies": r.energies.tolist(),
        "fallback": r.fallback,
        "fallback_reason": r.fallback_reason,
        "model_version": r.model_version,
        "timing_seconds": r.timing,
        "batch_size": r.batch_size,
    }
    if r.candidates is not None:
        out["candidates"] = r.candidates.tolist()
    return out


def _floats(text: str | None) -> np.ndarray | None:
    return None if text is None else np.array([float(x) for x in text.split(",")], np.float32)


if __name__ == "__main__":
    sys.exit(main())
