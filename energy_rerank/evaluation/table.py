"""Closed-loop reports -> one markdown table, every row paired against one base setting.

Each row names a setting of an `eval libero` report ("N=64", "N=64 oracle", "N=1" of another
policy, ...). Rows from different runs are comparable when they ran the same init states with the
same request seeds: then episode (task, init state) of a row and of the base are a pair, and the
row's won / lost count and exact sign test are taken against the base on those pairs, even when the
row comes from another report (a fine-tuned policy's N = 1 against the base policy's N = 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energy_rerank.evaluation.closed_loop import setting_label, sign_test, wilson


@dataclass(frozen=True)
class Row:
    """One line of the table: which report and which of its settings."""

    label: str  # what the table calls it
    report: Path  # an `eval libero` report.json
    setting: str = "N=1"  # a key of the report's settings, e.g. "N=64", "N=64 oracle"

    @classmethod
    def parse(cls, text: str) -> Row:
        """'LABEL::REPORT' or 'LABEL::REPORT#SETTING' (a directory means its report.json). '::' because
        labels and settings hold '=' ("N = 64", "N=64 oracle")."""
        label, sep, rest = text.partition("::")
        if not sep or not label or not rest:
            raise ValueError(f"a row is LABEL::REPORT[#SETTING], got {text!r}")
        path, _, setting = rest.partition("#")
        report = Path(path)
        if report.is_dir():
            report = report / "report.json"
        return cls(label, report, setting or "N=1")


def episodes_of(report: dict[str, Any], setting: str, source: Path) -> dict[tuple[int, int], bool]:
    """(task, init state) -> success for one setting of a report."""
    if setting not in report.get("settings", {}):
        known = ", ".join(report.get("settings", {})) or "none"
        raise ValueError(f"{source}: no setting {setting!r} (it has: {known})")
    return {
        (int(e["task"]), int(e["episode"])): bool(e["success"])
        for e in report["episodes"]
        if setting_label(e["n"], e["margin"], e["selector"]) == setting
    }


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no closed-loop report at {path}")
    report = json.loads(path.read_text())
    if not report.get("complete", False):
        raise ValueError(f"{path}: the run is not complete (tasks done: {report.get('tasks_done')})")
    return report


def table_rows(rows: list[Row], base: Row) -> list[dict[str, Any]]:
    """Per row: successes, episodes, Wilson 95%, switched share, won / lost against base, sign test p, per task."""
    cache: dict[Path, dict[str, Any]] = {}

    def report_of(row: Row) -> dict[str, Any]:
        if row.report not in cache:
            cache[row.report] = load(row.report)
        return cache[row.report]

    reference = episodes_of(report_of(base), base.setting, base.report)
    out = []
    for row in rows:
        report = report_of(row)
        mine = episodes_of(report, row.setting, row.report)
        if set(mine) != set(reference):
            raise ValueError(
                f"{row.label}: its episodes ({len(mine)}) are not the base's ({len(reference)}): "
                "rows are paired by task and init state, so they must run the same ones"
            )
        k = sum(mine.values())
        won = sum(mine[e] and not reference[e] for e in mine)
        lost = sum(reference[e] and not mine[e] for e in mine)
        tasks = sorted({t for t, _ in mine})
        paired = row != base
        out.append({
            "label": row.label,
            "successes": k,
            "episodes": len(mine),
            "wilson95": wilson(k, len(mine)),
            "reranked_share": report["settings"][row.setting]["reranked_share"],
            "won": won if paired else None,
            "lost": lost if paired else None,
            "sign_test_p": sign_test(won, lost) if paired else None,
            "per_task": [sum(s for (t, _), s in mine.items() if t == task) for task in tasks],
        })  # fmt: skip
    return out


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| setting | success | Wilson 95% | non-base chunk chosen | won / lost vs base | sign test p | per task |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["wilson95"]
        paired = "-" if r["won"] is None else f"{r['won']} / {r['lost']}"
        p = "-" if r["sign_test_p"] is None else f"{r['sign_test_p']:.2g}"
        lines.append(
            f"| {r['label']} | {r['successes']}/{r['episodes']} | [{lo:.2f}, {hi:.2f}] | "
            f"{100 * r['reranked_share']:.0f}% | {paired} | {p} | {', '.join(map(str, r['per_task']))} |"
        )
    return "\n".join(lines) + "\n"
