"""The package layout's rules: dependencies run one way and the rank side stays torch-only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Each top-level package and the packages it must never import (also inside functions).
FORBIDDEN = {"twots": ("pipelines", "experiments"), "pipelines": ("experiments",)}
# What runs inside TorchDistributor ranks (or torchrun on a GPU box without Spark) and what serving loads.
RANK_SIDE = ("twots.models.two_time_scale", "twots.models.baselines", "twots.models.losses", "twots.models.kinds",
             "twots.data.tables", "twots.training.trainer", "twots.training.loaders", "twots.training.distributed",
             "twots.training.runs", "twots.evaluation.replay", "twots.evaluation.metrics")
DRIVER_ONLY = ("pyspark", "mlflow", "petastorm")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_dependencies_run_one_way():
    wrong = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / package).rglob("*.py")):
            wrong += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(imported_modules(path))
                      if name.split(".")[0] in forbidden]
    assert not wrong, "\n".join(wrong)


def test_rank_side_modules_import_no_spark_mlflow_or_petastorm():
    # A fresh interpreter per run: what each module pulls in, not what this test session already imported.
    code = (f"import importlib, json, sys\nfound = {{}}\nfor name in {list(RANK_SIDE)!r}:\n"
            "    importlib.import_module(name)\n"
            f"    found[name] = sorted({{m.split('.')[0] for m in sys.modules}} & {set(DRIVER_ONLY)!r})\n"
            "print(json.dumps(found))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert list(found) == list(RANK_SIDE)
    assert all(not heavy for heavy in found.values()), found


def test_a_forbidden_import_is_caught(tmp_path):
    """The checker reads imports inside functions too (the driver-side habit of importing late)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.views import make_view\n    import experiments.compare\n")
    assert imported_modules(module) == {"pipelines.views", "experiments.compare"}
