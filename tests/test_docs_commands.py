"""The shell commands the documentation marks runnable (a fenced block opened with ```bash runnable)
run and exit 0, from the repository root.

Only fast commands are marked: `--help`, `--print-config` and runs of a few seconds. An
`energy-rerank ...` command without shell syntax runs in this process through the same `main` the
console script calls, because each new process spends seconds importing torch and every
subsystem; anything else runs in bash with this interpreter's bin directory first on PATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "bash runnable"
SHELL_SYNTAX = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}
MUST_BE_MARKED = {  # the --help (or equivalent) of every job the README documents
    "energy-rerank serve --help",  # serve, deploy
    "energy-rerank serve --print-config",
    "energy-rerank-client --help",  # bring your robot
    "energy-rerank policy-bundle pi0 --help",  # bring your policy
    "energy-rerank cache-features --help",  # train a head
    "energy-rerank train --help",
    "energy-rerank eval offline --help",  # check a head before serving it
}


def runnable_commands(paths: list[Path], root: Path = ROOT) -> list[tuple[str, str]]:
    """(where, command) for every command line in a runnable block; backslash continuations joined,
    comment lines dropped."""
    found = []
    for path in paths:
        info, lines, in_block = "", [], False
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not in_block and stripped.startswith("```"):
                info, lines, in_block = stripped[3:].strip(), [], True
            elif in_block and stripped == "```":
                in_block = False
                if info == MARKER:
                    text = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
                    where = str(path.relative_to(root))
                    found += [(where, c.strip()) for c in text.splitlines() if c.strip() and not c.strip().startswith("#")]
            elif in_block:
                lines.append(line)
    return found


def documentation() -> list[Path]:
    return [ROOT / "README.md", ROOT / "kernels" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


COMMANDS = runnable_commands(documentation())


def run(command: str) -> tuple[int, str]:
    """(exit status, output) of one documented command."""
    argv = shlex.split(command, comments=True)
    plain = argv and argv[0] == "energy-rerank" and not SHELL_SYNTAX & set(argv) and "$" not in command
    if plain:
        from energy_rerank.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main(argv[1:])
            except SystemExit as e:  # --help and usage errors exit through argparse
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code, out.getvalue()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_the_runner_sees_failures(tmp_path):
    assert run("energy-rerank no-such-command")[0] != 0
    assert run("false")[0] != 0
    assert run("energy-rerank --help")[0] == 0
    page = tmp_path / "page.md"
    page.write_text("```bash runnable\n# a comment\nenergy-rerank a \\\n  --b\n```\n```bash\nnot marked\n```\n")
    assert runnable_commands([page], root=tmp_path) == [("page.md", "energy-rerank a --b")]


def test_every_job_has_its_help_marked_runnable():
    marked = {c for _, c in COMMANDS}
    assert not sorted(MUST_BE_MARKED - marked), f"not marked runnable: {sorted(MUST_BE_MARKED - marked)}"


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}: {c}"[:90] for w, c in COMMANDS])
def test_documented_command_runs(where, command):
    code, output = run(command)
    assert code == 0, f"{where}: `{command}` exited {code}:\n{output[-3000:]}"
    if command.endswith("--help"):
        assert "usage:" in output
