"""The registries are the only places a loss's or a quantity's name is spelled: code elsewhere asks the loss
registry (a spec's ``family``, ``probabilities``, ``losses.reference()``), so it says why a loss is special rather
than which, and the quantity registry by how a quantity is read (``quantities.read_as``) or shown
(``quantities.table``)."""

import ast
from pathlib import Path

from study import losses, quantities

PACKAGE = Path(losses.__file__).parent


def spelled_names(path: Path, names: set[str]) -> list[str]:
    """``file:line`` of every string literal in ``path`` that equals one of ``names``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]


def test_no_module_but_the_registry_spells_a_loss_name():
    names = set(losses.names())
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "losses.py"
             for hit in spelled_names(path, names)]
    assert not found, "loss names spelled outside losses.py (ask the registry instead):\n" + "\n".join(found)


def test_no_module_but_the_registry_spells_a_quantity_name():
    """A quantity named like the history metric it reads (``ece``, ``brier``: ``Quantity.source``) is spelled where
    training writes that metric and readers select it, so only the names that are quantities alone are checked."""
    metrics = {q.source[1] for q in quantities.QUANTITIES}
    names = {q.name for q in quantities.QUANTITIES} - metrics
    assert {"final_accuracy", "val_auc", quantities.steps_name(1)} <= names  # what the scan looks for
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "quantities.py"
             for hit in spelled_names(path, names)]
    assert not found, "quantity names spelled outside quantities.py (ask the registry):\n" + "\n".join(found)


def test_the_scan_finds_a_spelled_name(tmp_path):
    module = tmp_path / "module.py"
    module.write_text('REFERENCE = "softmax_nll"\nfine = f"{REFERENCE}: a name inside a longer string"\n')
    assert spelled_names(module, {"softmax_nll"}) == [f"{module}:1: 'softmax_nll'"]
