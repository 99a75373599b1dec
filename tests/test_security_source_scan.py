"""No pickle, eval or exec anywhere in the project's Python: these turn bytes from a file or the
network into code execution. The scan reads the syntax tree, so words in comments and docstrings
("no pickle") do not count but every real use does:
- importing pickle-like modules (pickle, cPickle, dill, cloudpickle, shelve, marshal, joblib);
- calling eval / exec / compile by name;
- np.load(..., allow_pickle=True); torch.load without weights_only=True;
- pandas read_pickle / to_pickle; yaml.load without a safe loader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "dist", "node_modules", "runs", "__pycache__", ".mypy_cache",
             ".ruff_cache", ".pytest_cache", ".hypothesis"}  # fmt: skip
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
CODE_BUILTINS = {"eval", "exec", "compile"}  # (importlib-style imports of fixed names are fine)


def python_files() -> list[Path]:
    return [
        p for p in ROOT.rglob("*.py")
        if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)
        and not any(part.startswith(".venv-") for part in p.relative_to(ROOT).parts)  # other venvs (.venv-openpi)
    ]  # fmt: skip


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(source: str, path: str = "<src>") -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source, path)):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            out.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if isinstance(node.func, ast.Name) and name in CODE_BUILTINS:
                out.append(f"{where} {name}(...)")
            elif name in ("builtins.eval", "builtins.exec"):
                out.append(f"{where} {name}(...)")
            elif (
                last == "load"
                and name.split(".")[0] in ("np", "numpy")
                and _is_true(_kw(node, "allow_pickle"))
            ):
                out.append(f"{where} {name}(allow_pickle=True)")
            elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                out.append(f"{where} torch.load without weights_only=True")
            elif last in ("read_pickle", "to_pickle"):
                out.append(f"{where} {name}(...)")
            elif name == "yaml.load" and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
                out.append(f"{where} yaml.load without SafeLoader")
            elif name in ("yaml.unsafe_load", "yaml.full_load"):
                out.append(f"{where} {name}(...)")
    return out


def test_scanner_catches_what_it_must():
    bad = """
import pickle
from dill import loads
import numpy as np, torch, yaml
eval("1")
exec("x = 1")
np.load("a.npy", allow_pickle=True)
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
yaml.load(text)
"""
    got = findings(bad)
    assert len(got) == 8, got
    fine = """
'''no pickle here; eval( in a docstring'''
model.eval()  # a torch module's eval mode is fine
np.load("a.npy")
np.load("a.npy", allow_pickle=False)
torch.load("m.pt", weights_only=True)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
"""
    assert findings(fine) == []


def test_no_pickle_eval_or_exec_in_the_source_tree():
    files = python_files()
    assert len(files) > 50 and any(p.parts[-2:] == ("server", "codec.py") for p in files)
    problems = [f for p in files for f in findings(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not problems, "unsafe deserialisation or code execution:\n" + "\n".join(problems)
