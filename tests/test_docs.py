"""The documentation holds what it promises: links resolve, the CLI reference matches the parsers,
the Grafana dashboard queries metrics a real server exports, the library example runs, and the
README stays a short entry point with the content moved into docs/ rather than lost."""

from __future__ import annotations

import dataclasses
import json
import re
import runpy
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"


def markdown_files() -> list[Path]:
    """Every Markdown file the documentation is made of."""
    return [
        README,
        ROOT / "kernels" / "README.md",
        *sorted(DOCS.rglob("*.md")),
        *sorted((ROOT / "bench" / "recorded").rglob("*.md")),
    ]


FENCE = re.compile(r"^(```+|~~~+)(.*)$")


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the prose with fenced blocks blanked out, [(info string, body)] of every fenced block)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence, info, body = "", "", []  # type: ignore[var-annotated]
    for line in text.splitlines():
        m = FENCE.match(line.strip())
        if not fence and m:
            fence, info, body = m.group(1), m.group(2).strip(), []
            prose.append("")
        elif fence and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            blocks.append((info, "\n".join(body) + "\n"))
            fence = ""
            prose.append("")
        elif fence:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").replace("*", "")
    return "".join(c for c in text.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(path: Path) -> list[str]:
    """Every relative link in `path` whose file does not exist or whose #anchor is no heading there."""
    prose, _ = split_fences(path.read_text())
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    bad = []
    for m in LINK.finditer(prose):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            bad.append(f"{path.relative_to(ROOT)}: {target} (no such file in the repository)")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            bad.append(f"{path.relative_to(ROOT)}: {target} (no heading #{anchor})")
    return bad


def test_link_checker_catches_what_it_must(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# A `code` title: with punctuation\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-code-title-with-punctuation) [ok](other.md#twice-1) [ok](#here) [web](https://x.org/y)\n"
        "# Here\n`[not a link](missing.md)`\n```\n[in code](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [outside](../../etc/passwd)\n"
    )
    assert [b.split(": ", 1)[1] for b in broken_links(page)] == [
        "missing.md (no such file in the repository)",
        "other.md#nowhere (no heading #nowhere)",
        "../../etc/passwd (no such file in the repository)",
    ]


def test_every_relative_link_resolves():
    bad = [b for f in markdown_files() for b in broken_links(f)]
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------- README


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a Markdown text."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no '## {title}' section"
    return m.group(1)


def test_readme_is_a_short_entry_point():
    text = README.read_text()
    assert len(text.splitlines()) <= 170
    intro = text.split("```", 1)[0].split("\n", 2)[2]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", intro.strip()) if s]
    assert len(sentences) == 3, sentences
    diagram = next(body for info, body in split_fences(text)[1] if info in ("mermaid", "text"))
    order = [diagram.lower().index(w) for w in ("observation", "proposer", "candidate", "energy head", "selection", "robot")]
    assert order == sorted(order), "the diagram shows observation -> proposer -> candidates -> energy head -> selection -> robot"


def test_quick_start_is_the_two_make_commands_ci_runs():
    quick = section(README.read_text(), "Quick start")
    blocks = [body for info, body in split_fences(quick)[1]]
    assert [b.split()[:2] for b in blocks] == [["make", "serve"], ["make", "test"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve: setup$", makefile, re.M) and re.search(r"^test: ", makefile, re.M)


JOBS = {  # README section -> the docs page it must link to
    "Serve": "docs/serving.md",
    "Bring your robot": "docs/bring-your-robot.md",
    "Bring your policy": "docs/bring-your-policy.md",
    "Train a head": "docs/training.md",
    "Check a head before serving it": "docs/evaluation.md",
    "Deploy": "docs/serving.md#kubernetes",
}


@pytest.mark.parametrize("job", JOBS)
def test_each_job_has_one_command_and_its_page(job):
    body = section(README.read_text(), job)
    prose, blocks = split_fences(body)
    assert len(blocks) == 1 and len([ln for ln in blocks[0][1].splitlines() if ln.strip()]) == 1, "one command"
    assert f"]({JOBS[job]})" in prose


def test_readme_headline_results_link_the_results_page():
    body = section(README.read_text(), "Results")
    rows = [ln for ln in body.splitlines() if ln.startswith("|")][2:]
    assert 3 <= len(rows) <= 8
    assert "](docs/results.md)" in body and "docs/results.md#libero-object-held-out-closed-loop" in body
    assert "## Layout" in README.read_text()


# ------------------------------------------------------------------------- docs/ content


def test_docs_pages_cover_what_they_are_for():
    wanted = {
        "architecture.md": ["## Serving time", "## Training time", "## Conventions", "valid: bool [B, S]", "robot units"],
        "bundles.md": ["## Policy bundle", "## Energy bundle", "## selection.json"],
        "serving.md": ["## Batching and the queue", "## Metrics", "## Hot swap", "## Drain", "## Kubernetes",
                       "deploy/k8s.yaml", "grafana-dashboard.json"],
        "security.md": ["Protected:", "Not protected:"],
        "kernels.md": ["## Numerics", "## What is fused, and why not more"],
        "results.md": ["## LIBERO-Object: held-out closed loop"],
        "library.md": ["Reranker", "```python runnable"],
        "cli.md": ["## energy-rerank serve"],
        "bring-your-robot.md": [],
        "bring-your-policy.md": [],
    }  # fmt: skip
    for name, needles in wanted.items():
        text = (DOCS / name).read_text()
        missing = [n for n in needles if n not in text]
        assert not missing, f"docs/{name} lacks {missing}"


def test_measured_numbers_moved_out_of_the_readme_are_in_the_results_page():
    """Spot checks, one per results table the README used to hold: its numbers are in docs/results.md."""
    results = (DOCS / "results.md").read_text()
    for number in ("0.286 / 0.248 / 0.211", "0.0732 / 0.0723 / **0.0723** / 0.0726", "| N = 64 | 30/100 | [0.22, 0.40] | 233.7",
                   "| N = 64, margin 5.3 | 44/50", "| + head, N = 64, calibrated margin 2.14 | 41/100",
                   "**45/71 (63%)**", "| N = 16, oracle | 5/20", "**190/200** | [0.91, 0.97] | 63 / 5 | 8e-14",
                   "| quiet machine: after, `--workers 2` | **2341** | 92 s"):  # fmt: skip
        assert number in results, number
    held_out = section(results, "LIBERO-Object: held-out closed loop")
    assert "bash scripts/libero_ceiling.sh" in held_out and "bash scripts/libero_onpolicy.sh" in held_out


def test_per_run_tables_are_recorded_not_in_kernel_prose():
    """Measured tables live under bench/recorded/ (or docs/results), not in the kernels' design pages."""
    for page in (DOCS / "kernels.md", ROOT / "kernels" / "README.md"):
        prose = page.read_text()
        lines = prose.splitlines()
        headers = [a for a, b in zip(lines, lines[1:], strict=False) if re.match(r"^\|[-:| ]+\|$", b)]  # each table's header row
        headers = [h for h in headers if re.search(r"\bms\b|B x N|TFLOP|speed-up", h)]
        assert not headers, f"{page.relative_to(ROOT)} holds a per-run table: {headers}"
        assert "smem KB regs" not in prose
    assert "smem KB regs" in (ROOT / "bench/recorded/sm90-compile-2026-11-23/compile_report.txt").read_text()
    assert "| bf16 | - | 8 x 64 | 0.276 |" in (ROOT / "bench/recorded/h100-2026-11-23/README.md").read_text()


def test_bundles_page_names_every_recorded_field():
    """Every field written into a bundle's JSON is documented: a new config field fails here until it is."""
    from energy_rerank import checkpoint
    from energy_rerank.candidates import SamplerConfig
    from energy_rerank.config import EnergyConfig
    from energy_rerank.normalize import STATS_FILE, ArrayStats, NormStats
    from energy_rerank.policy.hf_adapter import ActionTokens, HFAdapterConfig
    from energy_rerank.policy.image_vla import ImageVLAConfig
    from energy_rerank.policy.pi0 import Pi0Config
    from energy_rerank.policy.reference import ReferenceConfig

    text = (DOCS / "bundles.md").read_text()
    classes = (EnergyConfig, SamplerConfig, NormStats, ArrayStats, ReferenceConfig, HFAdapterConfig, ActionTokens,
               Pi0Config, ImageVLAConfig)  # fmt: skip
    names = {f.name for c in classes for f in dataclasses.fields(c)}
    names |= {checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE, STATS_FILE, checkpoint.SELECTION_FILE}
    names |= {"kind", "format_version", "extra", "switch_margin", "calibration"}
    margin_src = (ROOT / "energy_rerank" / "evaluation" / "margin.py").read_text()
    held_out = re.findall(r'held_out\[f"(\w+)@\{k\}"\]', margin_src)
    assert {"rerank", "switched"} <= set(held_out)
    names |= {f"{k}@N" for k in held_out} | {"steps", "base"}
    missing = sorted(n for n in names if f"`{n}`" not in text and f'"{n}"' not in text)
    assert not missing, f"docs/bundles.md does not name {missing}"
    from energy_rerank.policy.loading import POLICY_KINDS

    assert all(f"`{kind}`" in text for kind in (*POLICY_KINDS, "energy_model"))


# ---------------------------------------------------------------------------- CLI reference


def test_cli_reference_is_current():
    """docs/cli.md is what `python -m energy_rerank.cli_reference` writes now: regenerate it
    (`make docs`) after changing a parser."""
    from energy_rerank.cli import build_parser
    from energy_rerank.cli_reference import PYTHON, commands, render

    recorded = (DOCS / "cli.md").read_text()
    parser = build_parser()
    found = list(commands(parser))
    # Version-independent: every command has its section and every option string appears in it.
    for name, sub in found:
        body = section(recorded, name)
        flags = sorted({s for a in sub._actions for s in a.option_strings} - {s for s in re.findall(r"-[-\w]+", body)})
        assert not flags, f"docs/cli.md, {name}: missing {flags}; run `make docs`"
    assert {m for m in re.findall(r"^## (.*)$", recorded, re.M)} == {n for n, _ in found}, "run `make docs`"
    # argparse lays help out differently in other Python versions; in the one that wrote the
    # file, the whole text must match.
    generated_with = re.search(r"with Python (\d+\.\d+)", recorded)
    assert generated_with, "docs/cli.md does not say which Python generated it"
    if generated_with.group(1) == PYTHON:
        assert recorded == render(build_parser()), "docs/cli.md is stale: run `make docs`"


def test_cli_reference_check_flag_fails_on_a_stale_file(tmp_path, capsys):
    from energy_rerank.cli_reference import main

    stale = tmp_path / "cli.md"
    stale.write_text("# CLI reference\n")
    assert main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


# ----------------------------------------------------------------------------- dashboard


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs += [query["query"]] if isinstance(query, dict) and "query" in query else []
    return exprs


METRIC = re.compile(r"\benergy_rerank_[a-zA-Z0-9_]+")


def test_dashboard_has_the_grafana_schema():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["panels"], "no panels"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["type"] and p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and METRIC.search(t["expr"]), (p["title"], t)
            assert t["expr"].count("(") == t["expr"].count(")") and t["expr"].count("{") == t["expr"].count("}")


def test_dashboard_queries_metrics_a_real_server_exports(tmp_path):
    """A real `energy-rerank serve`, one SelectAction, one scrape: every metric name in the
    dashboard's PromQL is one the server exports, and every metric the server declares is shown."""
    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy, energy = write_tiny_bundles(tmp_path)
    with ServerProcess(["--policy", str(policy), "--energy", str(energy), "--log-level", "ERROR"]) as srv:
        with RerankClient(srv.address, timeout=60) as client:
            info = client.info()
            h, w = info.image_size or (32, 32)
            r = client.select(images={c: np.zeros((h, w, 3), np.uint8) for c in info.cameras},
                              lowdim=np.zeros(info.lowdim_dim, np.float32), instruction="go to the red target",
                              num_candidates=8, seed=0)  # fmt: skip
            assert r.chunk.shape == (info.chunk_len, info.action_dim)
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as resp:
            scrape = resp.read().decode()
    samples = {ln.split("{")[0].split(" ")[0] for ln in scrape.splitlines() if ln and not ln.startswith("#")}
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scrape, re.M))  # family -> type
    exported = samples | set(declared)  # a labelled counter with no children yet is declared only
    used = {m for e in dashboard_exprs(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(e)}
    assert used and not sorted(used - exported), f"the dashboard queries metrics the server does not export: {sorted(used - exported)}"
    for name in used:  # histograms are queried through their series, not the family name
        assert not (declared.get(name) == "histogram"), f"{name} is a histogram: query {name}_bucket/_sum/_count"
    shown = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    families = {n for n, kind in declared.items() if not n.endswith("_created")}
    assert not sorted(families - shown), f"metrics the dashboard does not show: {sorted(families - shown)}"


# ------------------------------------------------------------------------ library example


def test_library_example_runs(tmp_path):
    """The `python runnable` blocks of docs/library.md, as a reader would paste them."""
    _, blocks = split_fences((DOCS / "library.md").read_text())
    code = [body for info, body in blocks if info == "python runnable"]
    assert code, "docs/library.md has no runnable example"
    for i, body in enumerate(code):
        example = tmp_path / f"library_example_{i}.py"
        example.write_text(body)
        runpy.run_path(str(example), run_name="__main__")
