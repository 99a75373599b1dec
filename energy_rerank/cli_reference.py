"""docs/cli.md, the CLI reference, written from the real `energy-rerank` parser.

    python -m energy_rerank.cli_reference > docs/cli.md     # or: make docs
    python -m energy_rerank.cli_reference --check docs/cli.md

Every command and nested command (`eval offline`, `policy-bundle pi0`, ...) gets its heading and
its `--help` verbatim, so the reference cannot drift from the flags: tests/test_docs.py
regenerates it in memory and compares. The help is laid out at a fixed width, not the
terminal's, so the file is the same wherever it is generated. argparse's layout changes between
Python versions (3.13 writes `-o, --out OUT` where 3.11 writes `-o OUT, --out OUT`), so the file
names the version it was generated with.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from energy_rerank.cli import build_parser

WIDTH = 100  # help columns: fits a rendered code block without wrapping again
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
GENERATOR = "python -m energy_rerank.cli_reference > docs/cli.md"


def commands(parser: argparse.ArgumentParser, name: str = "energy-rerank") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(full command, its parser) for the program and every command below it, depth first in
    the order they are registered."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from commands(child, f"{name} {child_name}")


def help_text(parser: argparse.ArgumentParser) -> str:
    """`parser.format_help()` at WIDTH columns, whatever the terminal."""
    original = parser.formatter_class
    formatter = cast(type[argparse.HelpFormatter], original)  # every argparse formatter takes width
    parser.formatter_class = functools.partial(formatter, width=WIDTH)  # type: ignore[assignment]
    try:
        return parser.format_help().rstrip() + "\n"
    finally:
        parser.formatter_class = original


def anchor(title: str) -> str:
    """The anchor a Markdown renderer gives the heading `title` (GitHub's rule)."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference as Markdown."""
    parser = parser or build_parser()
    found = list(commands(parser))
    out = [
        "# CLI reference",
        "",
        f"<!-- Generated from the argparse parsers by `{GENERATOR}` (or `make docs`) with Python {PYTHON}. "
        "Do not edit: regenerate after changing a parser. -->",
        "",
        "Every command of `energy-rerank` and its `--help`. Commands that group others (`eval`, `libero`,",
        "`policy-bundle`) list them; the leaves take the options.",
        "",
    ]
    out += [f"- [`{name}`](#{anchor(name)})" for name, _ in found]
    for name, sub in found:
        out += ["", f"## {name}", "", "```text", help_text(sub).rstrip(), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m energy_rerank.cli_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the reference")
    args = p.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    if args.check.read_text() == text:
        return 0
    print(f"{args.check} is out of date: run `{GENERATOR}`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
