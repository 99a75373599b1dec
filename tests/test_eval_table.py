"""`eval table`: rows from different closed-loop reports, paired against one base setting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from energy_rerank.evaluation.closed_loop import ClosedLoopConfig, summarize, write_report
from energy_rerank.evaluation.table import Row, render, table_rows

LAT = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}


def report_dir(tmp_path, name, successes, inits=(30, 31, 32, 33)):
    """A complete report with N=1 and N=16 oracle; successes[(setting, task, init)] -> bool (default False)."""
    cfg = ClosedLoopConfig(tasks=(0, 1), init_states=inits, ns=(1, 16), selectors=("oracle",))
    rows = [
        {"task": t, "n": n, "margin": m, "selector": sel, "episode": e, "steps": 50, "requests": 1,
         "success": successes.get((n, t, e), False), "reranked_share": 0.0 if n == 1 else 0.5, "fallbacks": 0,
         **LAT}
        for n, m, sel in cfg.settings()
        for t in cfg.tasks
        for e in inits
    ]  # fmt: skip
    write_report(summarize(rows, cfg, seconds=1.0), tmp_path / name)
    return tmp_path / name


def test_rows_from_two_reports_are_paired_against_the_base(tmp_path):
    base = report_dir(tmp_path, "base", {(1, 0, 30): True, (1, 1, 31): True, (16, 0, 30): True, (16, 0, 31): True,
                                         (16, 0, 32): True, (16, 1, 33): True})  # fmt: skip
    # another policy's N = 1 on the same episodes: wins (0, 32), loses (1, 31)
    other = report_dir(tmp_path, "other", {(1, 0, 30): True, (1, 0, 32): True})
    b = Row.parse(f"N = 1::{base}")
    rows = table_rows([b, Row.parse(f"oracle::{base}#N=16 oracle"), Row.parse(f"retrained::{other / 'report.json'}")], b)
    assert [r["label"] for r in rows] == ["N = 1", "oracle", "retrained"]
    assert rows[0]["won"] is None and rows[0]["successes"] == 2
    assert (rows[1]["successes"], rows[1]["won"], rows[1]["lost"]) == (4, 3, 1)
    assert rows[1]["sign_test_p"] == pytest.approx(0.625) and rows[1]["per_task"] == [3, 1]
    assert (rows[2]["won"], rows[2]["lost"], rows[2]["sign_test_p"]) == (1, 1, 1.0)
    text = render(rows)
    assert "| oracle | 4/8 | [0.22, 0.78] | 50% | 3 / 1 | 0.62 | 3, 1 |" in text


def test_unpaired_rows_and_unknown_settings_are_refused(tmp_path):
    base = report_dir(tmp_path, "base", {})
    elsewhere = report_dir(tmp_path, "elsewhere", {}, inits=(40, 41, 42, 43))
    b = Row.parse(f"base::{base}")
    with pytest.raises(ValueError, match="not the base's"):
        table_rows([Row.parse(f"x::{elsewhere}")], b)
    with pytest.raises(ValueError, match="no setting 'N=64'.*N=1, N=16 oracle"):
        table_rows([Row.parse(f"x::{base}#N=64")], b)
    with pytest.raises(ValueError, match="LABEL::REPORT"):
        Row.parse("no-equals-sign")
    partial = json.loads((base / "report.json").read_text())
    partial["complete"] = False
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(ValueError, match="not complete"):
        table_rows([Row.parse(f"x::{tmp_path / 'partial.json'}")], b)


def test_cli_writes_the_table(tmp_path):
    base = report_dir(tmp_path, "base", {(1, 0, 30): True})
    out = tmp_path / "t" / "table.md"
    cmd = [sys.executable, "-m", "energy_rerank.cli", "eval", "table", "--base", f"N = 1::{base}",
           "--row", f"N = 1::{base}", f"oracle::{base}#N=16 oracle", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.read_text() == res.stdout and res.stdout.count("\n") == 4
    assert json.loads((tmp_path / "t" / "table.md.json").read_text())[1]["lost"] == 1
    bad = subprocess.run(cmd[:-4] + ["x::/nonexistent"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no closed-loop report at /nonexistent" in bad.stderr
