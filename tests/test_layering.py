"""Which package may import which: read from the import statements of the source tree itself.

- the core (energy_rerank/) imports neither grpc nor triton at module level;
- the server translates and delegates: it imports nothing from the evaluation package (a head's
  bundle metadata is read by energy_rerank.checkpoint);
- kernels/ holds Triton kernels, their launchers and the Triton scorer: every module there
  imports triton (or is the package's own docstring).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module an `import` / `from ... import` in the file names (absolute imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imported_modules_sees_both_forms(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import grpc.aio\nfrom energy_rerank.evaluation.margin import x\ndef f():\n    import triton\n")
    assert imported_modules(f) == {"grpc.aio", "energy_rerank.evaluation.margin", "triton"}
    assert imported_modules(f, top_level_only=True) == {"grpc.aio", "energy_rerank.evaluation.margin"}


def test_server_imports_nothing_from_evaluation() -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("energy_rerank.evaluation"))
        for p in (ROOT / "server").glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_core_imports_neither_grpc_nor_triton_at_module_level() -> None:
    bad = {}
    for p in (ROOT / "energy_rerank").rglob("*.py"):
        mods = {m for m in imported_modules(p, top_level_only=True) if m.split(".")[0] in ("grpc", "triton")}
        if mods:
            bad[str(p.relative_to(ROOT))] = sorted(mods)
    assert not bad


def test_kernels_holds_only_triton_code() -> None:
    """Every module in kernels/ is a Triton kernel (imports triton) or part of the Triton scorer
    (reached from triton_scorer.py through kernels/ imports); the scorer reaches the kernels."""
    modules = {p.stem: p for p in (ROOT / "kernels").glob("*.py") if p.name != "__init__.py"}
    prefix = "energy_rerank.kernels."
    deps = {name: {m[len(prefix):].split(".")[0] for m in imported_modules(p) if m.startswith(prefix)}
            for name, p in modules.items()}  # fmt: skip
    kernels = {name for name, p in modules.items() if any(m.split(".")[0] == "triton" for m in imported_modules(p))}
    reached, todo = set(), ["triton_scorer"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += sorted(deps.get(name, ()))
    assert kernels and kernels <= reached, f"triton_scorer does not reach the kernels {sorted(kernels - reached)}"
    stray = sorted(set(modules) - kernels - reached)
    assert not stray, f"kernels/ modules that are neither Triton kernels nor part of the Triton scorer: {stray}"
