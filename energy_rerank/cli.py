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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy-rerank",
        description="Inference-time energy reranking of robot policy action chunks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        # A subsystem folder that is not part of this install is simply absent from --help;
        # any other import error is a real bug and propagates.
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
