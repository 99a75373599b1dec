"""`energy-rerank` command line: one entry point, one sub-command module per subsystem.

Each module listed in SUBCOMMANDS defines `add_parser(subparsers)` which registers its
command(s) and sets `func` on the parsed namespace.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

SUBCOMMANDS = (
    "energy_rerank.training.cli",  # train, train-policy
    "energy_rerank.server.cli",  # serve
    "energy_rerank.scoring.cli",  # export
    "energy_rerank.evaluation.cli",  # eval offline, eval libero
    "energy_rerank.libero.cli",  # libero demos
    "energy_rerank.policy.bundle_cli",  # policy-bundle pi0, policy-bundle image-vla
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except where X is None: there the option is
    unset (the preset's or config's value applies) and its help says so in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def float_list(text: str) -> tuple[float, ...]:
    """argparse type for "0.1,0.3,0.5"; a bad value is a usage error naming the flag."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def int_list(text: str) -> tuple[int, ...]:
    """argparse type for integer lists, one syntax everywhere: "0-9", "0,3,5", "1,16,64", "0-2,7"."""
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse {part!r}; use e.g. '0-9' or '1,16,64'") from None
        if last < first:
            raise argparse.ArgumentTypeError(f"empty range {part!r}")
        ids.extend(range(first, last + 1))
    return tuple(ids)


def layer_list(text: str) -> tuple[int, ...]:
    """argparse type for which of the policy's layer chunks are candidates: "none" (noise around the
    policy's chunk only) or layer indices as int_list reads them, e.g. "0,1"."""
    return () if text.strip().lower() == "none" else int_list(text)


LAYER_CANDIDATES_HELP = (
    "which of the policy's intermediate-layer chunks are candidates: 'none' (only noise around the "
    "policy's chunk) or layer indices, e.g. '0,1' (default: what the energy head was trained with; "
    "heads trained without a record: all but the last layer)"
)


DATA_HELP = (
    "data sources: LIBERO .hdf5 files (demos or on-policy rollouts), LeRobot .parquet files, directories "
    "of them, or the synthetic task as 'synthetic:episodes=200,seed=1[,image_size=32]'"
)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--data / --demos / --stride: where windows come from (energy_rerank.data), for every command that reads data."""
    p.add_argument("--data", nargs="+", required=True, metavar="SPEC", help=DATA_HELP)
    p.add_argument("--demos", type=int_list, help="demo_i of every HDF5 file to use, e.g. '0-9' (default: all)")
    p.add_argument("--stride", type=int, default=1, help="use every stride-th step of each episode")
    p.add_argument("--failed-steps", type=int, default=None, metavar="K",
                   help="of an on-policy rollout that failed, use only the first K steps (default: all); later "
                        "states are often ones the expert cannot finish from, and their labels teach nothing")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy-rerank",
        description="Inference-time energy reranking of robot policy action chunks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="energy-rerank [-h] COMMAND ...",
        epilog="`energy-rerank COMMAND --help` explains each command and its options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", prog="energy-rerank")
    for name in SUBCOMMANDS:
        # A subsystem folder that is not part of this install is simply absent from --help;
        # any other import error is a real bug and propagates.
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).add_parser(sub)
    # Every command, nested ones included ("eval offline"), one line each, instead of argparse's
    # wrapped listing of the first level only.
    lines = command_lines(parser)
    width = max(len(n) for n, _ in lines) + 2
    parser.description = (parser.description or "") + "\n\ncommands:\n" + "\n".join(
        f"  {n:<{width}}{h}" for n, h in lines
    )
    sub.help = argparse.SUPPRESS
    return parser


def command_lines(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, str]]:
    """(full command, its one-line help) for every leaf command under `parser`."""
    out: list[tuple[str, str]] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, child in action.choices.items():
            nested = command_lines(child, f"{prefix}{name} ")
            out += nested or [(f"{prefix}{name}", helps.get(name, ""))]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed: a command may need to tell given flags from defaults (serve --config)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
