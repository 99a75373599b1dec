"""`energy-rerank serve`: flags -> ServerConfig -> run the server until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from energy_rerank.checkpoint import BundleError
from energy_rerank.cli import LAYER_CANDIDATES_HELP, float_list, layer_list
from energy_rerank.kernels.triton_support import CHAIN_MODES, FP32_PRECISIONS
from energy_rerank.scoring.backends import BACKENDS
from energy_rerank.server.batcher import BatchConfig
from energy_rerank.server.config import DEFAULT_ENERGY, DEFAULT_POLICY, ServerConfig
from energy_rerank.server.observation_keys import ObservationKeys
from energy_rerank.server.switch_watch import WatchConfig

TOKEN_ENV = "ENERGY_RERANK_TOKEN"

DESCRIPTION = """\
Serve SelectAction / ScoreCandidates / GetModelInfo over gRPC (plus the standard health and
reflection services) and Prometheus metrics over HTTP.

With no arguments it serves the embedded default: the tiny reference policy and an energy head
trained on the synthetic task, bound to 127.0.0.1:50051 with metrics on 127.0.0.1:9464.
Stop with Ctrl-C or SIGTERM: the server reports NOT_SERVING, serves the calls that reach it
within --drain-accept-seconds, refuses later ones UNAVAILABLE (clients retry them elsewhere),
finishes every call in flight (up to --drain-seconds) and exits.

Model updates without downtime: SIGHUP reloads the energy head from --energy (point it at a
symlink and flip the link), or call RerankAdmin.ReloadEnergyHead with the token
(`energy-rerank-client reload [PATH]`). Calls in flight finish on the old head.

Robots that speak openpi's websocket protocol or OpenVLA-OFT's POST /act need only a new
address: --openpi-address / --oft-address serve those protocols from the same process, batcher
and limits (docs/bring-your-robot.md).

Auth: set ${env} (or --token-file) to require `authorization: Bearer <token>` on every call
except health checks (the openpi and OFT front ends also take openpi's `Api-Key <token>`).
Without TLS the token travels in clear text: bind beyond loopback only with --tls-cert/--tls-key.
""".replace("{env}", TOKEN_ENV)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the reranker over gRPC", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    d = ServerConfig()
    g = p.add_argument_group("models")
    g.add_argument(
        "--policy", type=Path, default=DEFAULT_POLICY, help="policy bundle directory (default: embedded)"
    )
    g.add_argument(
        "--energy", type=Path, default=DEFAULT_ENERGY, help="energy-head bundle directory (default: embedded)"
    )
    g.add_argument(
        "--device", default=d.device, help="torch device, e.g. cpu or cuda:0 (default: %(default)s)"
    )
    g.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="energy scorer backend; auto = triton on CUDA, else torch (default: %(default)s)")  # fmt: skip
    g.add_argument("--onnx", type=Path, help="exported energy head for --backend onnxruntime")
    g.add_argument("--fp32-precision", default=d.fp32_precision, choices=FP32_PRECISIONS,
                   help="triton, fp32 heads: dot precision; tf32x3 matches fp32 on the tensor cores, ieee skips them (default: %(default)s)")  # fmt: skip
    g.add_argument("--chains", default=d.chains, choices=CHAIN_MODES,
                   help="triton: fused = one launch per chain of hidden-wide layers, fused_cublas = the same with "
                        "the context's wide product on cuBLAS (bf16), layered = one per layer, auto = time every "
                        "plan that can run per CUDA-graph bucket at start-up and keep the fastest (default: %(default)s)")  # fmt: skip
    g.add_argument(
        "--max-candidates",
        type=int,
        default=d.max_candidates,
        help="largest N per request (default: %(default)s)",
    )
    g.add_argument("--default-candidates", type=int, default=d.default_candidates,
                   help="N when a request does not say (default: %(default)s)")  # fmt: skip
    g.add_argument("--switch-margin", type=float, default=d.switch_margin,
                   help="energy gain a candidate needs to replace the policy's own chunk when a request does not "
                        "say; 0 = plain argmin, inf = never rerank (default: the margin `energy-rerank eval offline "
                        "--write-margin` recorded in the energy bundle, else 0)")  # fmt: skip
    g.add_argument("--sigmas", type=float_list,
                   help="noise sigmas of the candidates around the policy's chunk, normalised units, e.g. "
                        "0.1,0.3,0.5 (default: what the energy head was trained with)")  # fmt: skip
    g.add_argument("--gripper-mode", choices=("keep", "flip", "vote"),
                   help="noise candidates' gripper: keep the policy's, flip from a random step, or the layer "
                        "chunks' vote (default: what the energy head was trained with)")  # fmt: skip
    g.add_argument("--layer-candidates", type=layer_list, metavar="LAYERS", help=LAYER_CANDIDATES_HELP)
    g = p.add_argument_group("network")
    g.add_argument(
        "--address", default=d.address, help="host:port to bind, port 0 = any free (default: %(default)s)"
    )
    g.add_argument("--openpi-address", metavar="HOST:PORT",
                   help="also serve openpi's websocket policy protocol (WebsocketClientPolicy) here, e.g. "
                        "127.0.0.1:8000; port 0 = any free (default: off)")  # fmt: skip
    keys = d.openpi_keys
    g.add_argument("--openpi-keys", type=observation_keys, default=keys, metavar="JSON",
                   help="which openpi observation keys feed the policy: a JSON object (or a .json file) of the "
                        "fields to change, e.g. '{\"cameras\": [\"observation/exterior_image_1_left\"], \"state\": "
                        f"\"observation/joint_position\"}}' (default: openpi's LIBERO example, {keys.to_json()})")  # fmt: skip
    g.add_argument("--oft-address", metavar="HOST:PORT",
                   help="also serve OpenVLA-OFT's POST /act JSON protocol (get_action_from_server) here, e.g. "
                        "127.0.0.1:8777; port 0 = any free (default: off)")  # fmt: skip
    g.add_argument("--max-message-mb", type=float, default=d.max_message_bytes / 2**20,
                   help="largest request in MiB; larger ones get RESOURCE_EXHAUSTED (default: %(default)s)")  # fmt: skip
    g.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels,
                   help="pixels one request's images may decode to, over the cameras the policy reads (images "
                        "of other cameras are never decoded); more gets INVALID_ARGUMENT (default: %(default)s)")  # fmt: skip
    g.add_argument("--max-decoded-pixels", type=int, default=d.max_decoded_pixels,
                   help="pixels decoded and held at once over all requests, which bounds image memory (3 bytes "
                        "a pixel); requests beyond it get RESOURCE_EXHAUSTED (default: %(default)s)")  # fmt: skip
    g.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS with --tls-key)")
    g.add_argument("--tls-key", type=Path, help="PEM private key")
    g.add_argument("--token-file", type=Path, help=f"file holding the bearer token (or set ${TOKEN_ENV})")
    g.add_argument("--drain-seconds", type=float, default=d.drain_seconds,
                   help="on shutdown, how long calls in flight may take (default: %(default)s)")  # fmt: skip
    g.add_argument("--drain-accept-seconds", type=float, default=d.drain_accept_seconds,
                   help="on shutdown, calls reaching the server this long after the signal are still served; "
                        "later ones get UNAVAILABLE (default: %(default)s)")  # fmt: skip
    g = p.add_argument_group("batching")
    b = BatchConfig()
    g.add_argument(
        "--max-batch", type=int, default=b.max_batch, help="requests per model call (default: %(default)s)"
    )
    g.add_argument("--max-delay-us", type=int, default=b.max_delay_us,
                   help="how long a batch may wait for more requests, microseconds (default: %(default)s)")  # fmt: skip
    g.add_argument("--queue-limit", type=int, default=b.queue_limit,
                   help="queued requests beyond which new ones get RESOURCE_EXHAUSTED (default: %(default)s)")  # fmt: skip
    g = p.add_argument_group("metrics")
    g.add_argument("--metrics-port", type=int, default=d.metrics_port,
                   help="Prometheus port, 0 = any free, -1 = off (default: %(default)s)")  # fmt: skip
    g.add_argument(
        "--metrics-address", default=d.metrics_address, help="exporter bind address (default: %(default)s)"
    )
    w = d.switch_watch
    g.add_argument("--switch-watch-window", type=int, default=w.window,
                   help="compare the live switch rate over this many answers with the one the head's calibration "
                        "(selection.json) expects; gauges switch_rate_live/_expected and a warning above "
                        "--switch-watch-factor x expected; 0 = off (default: %(default)s)")  # fmt: skip
    g.add_argument("--switch-watch-factor", type=float, default=w.factor,
                   help="warn when the live switch rate exceeds this multiple of the expected one "
                        f"(and the expected one + {w.min_excess:g}) (default: %(default)s)")  # fmt: skip
    g.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    g = p.add_argument_group("configuration file")
    g.add_argument("--config", type=Path,
                   help="a server config JSON (as --print-config writes it): its values replace the defaults "
                        "above, and the flags given on the command line override it; the token never goes in it")  # fmt: skip
    g.add_argument("--print-config", action="store_true",
                   help="print the config these flags (and --config) give, as JSON, and exit")  # fmt: skip
    p.set_defaults(func=run, serve_parser=p)


# Flags whose dest is not the ServerConfig field they set ("a.b": a nested field; None: not one).
DEST_FIELDS: dict[str, str | None] = {
    "policy": "policy_path", "energy": "energy_path", "onnx": "onnx_path",
    "max_message_mb": "max_message_bytes", "token_file": None, "log_level": None,
    "max_batch": "batch.max_batch", "max_delay_us": "batch.max_delay_us", "queue_limit": "batch.queue_limit",
    "switch_watch_window": "switch_watch.window", "switch_watch_factor": "switch_watch.factor",
    "config": None, "print_config": None, "func": None, "serve_parser": None, "command": None,
}  # fmt: skip


def effective_config(args: argparse.Namespace) -> ServerConfig:
    """The flags' config, or with --config the file's, overridden by the flags given on the command line."""
    from energy_rerank.server.config_file import config_from_json, explicit_dests, merged

    flags = config_from_args(args)
    if args.config is None:
        return flags
    argv = list(getattr(args, "argv", []))
    given = explicit_dests(args.serve_parser, argv[argv.index("serve") + 1 :] if "serve" in argv else argv)
    return merged(config_from_json(args.config.read_text(), where=str(args.config)), flags, given, DEST_FIELDS)


def observation_keys(text: str) -> ObservationKeys:
    """--openpi-keys: inline JSON, or the path of a .json file holding it."""
    path = Path(text)
    try:
        return ObservationKeys.from_json(path.read_text() if text.endswith(".json") and path.is_file() else text)
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV) or None
    return ServerConfig(
        policy_path=args.policy,
        energy_path=args.energy,
        device=args.device,
        backend=args.backend,
        fp32_precision=args.fp32_precision,
        chains=args.chains,
        onnx_path=args.onnx,
        address=args.address,
        openpi_address=args.openpi_address,
        openpi_keys=args.openpi_keys,
        oft_address=args.oft_address,
        batch=BatchConfig(args.max_batch, args.max_delay_us, args.queue_limit),
        max_candidates=args.max_candidates,
        default_candidates=args.default_candidates,
        switch_margin=args.switch_margin,
        switch_watch=WatchConfig(window=args.switch_watch_window, factor=args.switch_watch_factor),
        sigmas=args.sigmas,
        gripper_mode=args.gripper_mode,
        layer_candidates=args.layer_candidates,
        max_message_bytes=int(args.max_message_mb * 2**20),
        max_request_pixels=args.max_request_pixels,
        max_decoded_pixels=args.max_decoded_pixels,
        auth_token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        metrics_address=args.metrics_address,
        drain_seconds=args.drain_seconds,
        drain_accept_seconds=args.drain_accept_seconds,
    )


def run(args: argparse.Namespace) -> int:
    from energy_rerank.server.main import serve  # grpc and the models load only when serving

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = effective_config(args)
        if args.print_config:
            from energy_rerank.server.config_file import config_to_json

            print(config_to_json(config))
            return 0
        asyncio.run(serve(config))
    except (BundleError, OSError, ValueError) as e:  # bad paths, ports, flags: no traceback needed
        print(f"energy-rerank serve: error: {e}", file=sys.stderr)
        return 2
    return 0
