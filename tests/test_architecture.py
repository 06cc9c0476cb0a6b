"""docs/architecture.md's rules, checked on the imports of src/study (read with ast, nothing imported).

Each wing is found from its entry, not from a list: the loop is ``train`` and every study module it imports; the
report wing is what the ``report`` and ``compare`` commands import beyond the loop's modules; ``ops`` is the package
src/study/ops. A module added later falls under the rules of the wing that imports it.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "study"
TRACKERS = {"tracking", "mlflow_store"}  # the only modules that may import mlflow
WIRING = {"runner", "cli", "__main__"}  # stage wiring: may reach everything, ops included
DATASET_READERS = {"torch", "torchvision", "mnist1d"}  # external packages a statistics module never needs


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, ``ops.server`` for src/study/ops/server.py, ``ops`` for its __init__."""
    return {_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _study_module(dotted: str) -> str | None:
    """``x.y.z`` -> the longest prefix that is a module of the package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules():
            return ".".join(parts[:end])
    return None


def _walk(tree: ast.AST):
    """Nodes under ``tree``, without the bodies of ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_walk(child)])
            continue
        yield node
        yield from _walk(node)


def _imports_in(tree: ast.AST, package: str) -> tuple[frozenset[str], frozenset[str]]:
    """(study modules, external top-level packages) imported anywhere under ``tree``, in functions too."""
    study, external = set(), set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "study" or alias.name.startswith("study."):
                    found = _study_module(alias.name.removeprefix("study").removeprefix("."))
                    study |= {found} if found else set()
                else:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                dotted = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "study" or (node.module or "").startswith("study."):
                dotted = node.module.removeprefix("study").removeprefix(".")
            else:
                external.add((node.module or "").split(".")[0])
                continue
            for alias in node.names:
                found = _study_module(f"{dotted}.{alias.name}" if dotted else alias.name) or _study_module(dotted)
                study |= {found} if found else set()
    return frozenset(study), frozenset(external)


@cache
def imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(ast.parse(path.read_text(), str(path)), package)


def closure(*roots: str) -> set[str]:
    """The roots and every study module they import, directly or not."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports(module)[0] - seen)
    return seen


def cli_entries(*commands: str) -> set[str]:
    """The study modules that cli's ``<command>_cmd`` functions import (the stage's entry modules)."""
    tree = ast.parse(modules()["cli"].read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    found = set()
    for command in commands:
        assert f"{command}_cmd" in functions, f"cli.py has no {command}_cmd: update tests/test_architecture.py"
        found |= _imports_in(functions[f"{command}_cmd"], "")[0]
    return found


def loop() -> set[str]:
    return closure("train")


def report_wing() -> set[str]:
    return closure(*cli_entries("report", "compare")) - loop()


def is_ops(module: str) -> bool:
    return module == "ops" or module.startswith("ops.")


# ---- the walker itself, on a fabricated package -------------------------------------------------------------------


def test_the_import_reader_sees_every_form(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"a": SRC / "a.py", "ops": SRC / "ops" / "__init__.py", "ops.b": SRC / "ops" / "b.py"}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    code = ast.parse(
        "import torch.nn\nfrom study import a\nfrom study.ops import b\nfrom . import b as c\n"
        "def f():\n    import mlflow\n"
        "if TYPE_CHECKING:\n    import pandas\n"
    )
    study, external = _imports_in(code, "ops")
    assert study == {"a", "ops.b"}
    assert external == {"torch", "mlflow"}


# ---- the rules ---------------------------------------------------------------------------------------------------


def test_the_wings_are_found() -> None:
    """A rule over an empty wing cannot fail: each wing holds the modules it is known to hold."""
    assert {"train", "losses", "model", "data"} <= loop()
    assert "tables" in report_wing() and len(report_wing()) > 3


def test_the_training_loop_never_logs_or_writes_tables() -> None:
    """train and everything it imports: no tracker, no mlflow, no table writer, no stage wiring, no ops."""
    for module in sorted(loop()):
        study, external = imports(module)
        banned = {m for m in study if m in TRACKERS | WIRING | {"tables"} or is_ops(m)}
        assert not banned, f"{module} is part of the training loop and must not import {sorted(banned)}"
        assert "mlflow" not in external, f"{module} is part of the training loop and must not import mlflow"


def test_the_report_never_trains_or_imports_torch() -> None:
    for module in sorted(report_wing()):
        study, external = imports(module)
        assert not external & DATASET_READERS, f"{module} (report wing) imports {sorted(external & DATASET_READERS)}"
        trains = study & {"train", "runner"}
        assert not trains, f"{module} (report wing) must not import {sorted(trains)}: the report reads results/"


def test_statistics_never_read_datasets() -> None:
    """The report and compare commands reach no dataset module (``data`` and what reads raw files)."""
    reached = closure(*cli_entries("report", "compare"))
    readers = {m for m in modules() if DATASET_READERS & imports(m)[1] - {"torch"}} | {"data"}
    assert not reached & readers, f"the report wing reaches {sorted(reached & readers)}"


def test_only_the_trackers_import_mlflow_on_the_study_path() -> None:
    """What a stage runs (the loop, its wiring, the report wing) meets mlflow only through the tracking modules."""
    on_path = closure("runner") | loop() | closure(*cli_entries("report", "compare"))
    for module in sorted(on_path - TRACKERS):
        if not is_ops(module):
            assert "mlflow" not in imports(module)[1], f"{module} imports mlflow; go through study.tracking"


def test_nothing_but_the_wiring_imports_ops() -> None:
    """ops/ runs the study (server, executor, benches, budget, store rebuild); the science never depends on it."""
    for module in sorted(m for m in modules() if not is_ops(m) and m not in WIRING):
        reached = sorted(m for m in imports(module)[0] if is_ops(m))
        assert not reached, f"{module} imports {reached}: only runner and cli may import from study.ops"


def is_figure_module(module: str) -> bool:
    """``figures`` and the ``*_figures`` modules: one function per figure, DataFrames in, a Figure out."""
    return module == "figures" or module.endswith("_figures")


def test_only_the_figure_modules_import_the_plotting_libraries() -> None:
    drawing = {m for m in modules() if imports(m)[1] & {"matplotlib", "seaborn"}}
    assert "figures" in drawing and len(drawing) > 1  # the rule below is over the modules that draw
    for module in sorted(drawing):
        assert is_figure_module(module), f"{module} imports matplotlib or seaborn; draw in a *_figures module"
        assert module in report_wing(), f"{module} draws outside the report wing"
