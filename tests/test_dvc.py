"""dvc.yaml against the code: each stage's deps are the modules it imports, its params the keys it reads, and a bad
params file stops `dvc repro` before any stage deletes an output."""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from study import cli, config, data, losses, tables

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "study"
SMOKE = REPO / "experiments" / "smoke.yaml"
MARKER = "experiments/validated.json"
# Read by the stages but changing no output: the MLflow experiment and switch, and the list `tune` stages are made
# from (dvc.yaml's foreach), which `study tune` only checks its condition against.
NOT_PARAMS = {"study.experiment", "study.tracking", "study.tune", "study.executor"}
# Condition keys that fall back to the study's when a condition sets none: reading them reads the study's key.
INHERITED = {"losses": "study.losses", "backend": "study.backend", "seeds": "study.seeds"}


def pipeline() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its `do` block."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def subcommand(stage: dict) -> str:
    match = re.match(r"python -m study (\w+)", stage["cmd"])
    assert match, f"stage command {stage['cmd']!r} does not run `python -m study <stage>`"
    return match.group(1)


# ---- deps: the modules each stage imports ----------------------------------------------------------------------


def _module_of(name: str) -> str | None:
    """`study.x...` -> `x` when src/study/x.py exists, `study.ops.y...` -> `ops/y` when src/study/ops/y.py does: a
    module by its path under src/study, without `.py`."""
    parts = name.split(".")
    if parts[0] != "study":
        return None
    for end in range(len(parts), 1, -1):
        if SRC.joinpath(*parts[1:end]).with_suffix(".py").is_file():
            return "/".join(parts[1:end])
    return None


def _imports(node: ast.AST) -> set[str]:
    """Modules of src/study that the statements under ``node`` import (in functions too; not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING":
            return
        if isinstance(n, ast.Import):
            found.update(filter(None, (_module_of(alias.name) for alias in n.names)))
        elif isinstance(n, ast.ImportFrom):
            base = "study" if n.level == 1 and not n.module else (f"study.{n.module}" if n.level == 1 else n.module)
            if base:  # `from study.ops import cluster` imports a module; `from study.ops.cluster import X`, one too
                found.update(filter(None, (_module_of(f"{base}.{alias.name}") or _module_of(base)
                                           for alias in n.names)))
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return found


def _parse(module: str) -> ast.Module:
    return ast.parse((SRC / f"{module}.py").read_text())


def _closure(modules: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(_parse(module)) - seen)
    return seen


def _entry_functions() -> dict[str, str]:
    """`study <subcommand>` -> the cli function it dispatches to, from the `command("name", func, ...)` calls and the
    rows ("name", func, ...) of cli's table of stage subcommands."""
    entries = {}
    for node in ast.walk(_parse("cli")):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "command"
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Name)):
            entries[node.args[0].value] = node.args[1].id
        elif (isinstance(node, ast.Tuple) and len(node.elts) >= 2 and isinstance(node.elts[0], ast.Constant)
              and isinstance(node.elts[1], ast.Name) and node.elts[1].id.endswith("_cmd")):
            entries[node.elts[0].value] = node.elts[1].id  # a row of cli's table of stage subcommands
    return entries


def modules_run_by(subcommand_name: str) -> set[str]:
    """What `python -m study <subcommand>` imports: __main__, cli and cli's module-level imports, the imports inside
    the entry function and the cli helpers it calls, and everything those import in turn."""
    tree = _parse("cli")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = set()
    for statement in tree.body:
        if not isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            top |= _imports(statement)
    entry = _entry_functions()[subcommand_name]
    lazy, todo, seen = set(), [entry], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        lazy |= _imports(functions[name])
        todo.extend(n.func.id for n in ast.walk(functions[name])
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions)
    assert _imports(_parse("__main__")) == {"cli"}, "src/study/__main__.py should import study.cli alone"
    return {"__main__", "cli"} | _closure(top | lazy)


@pytest.mark.parametrize("init", ["__init__", "ops/__init__"])
def test_the_package_init_imports_nothing(init: str):
    """Every import of study (or study.ops) runs its __init__.py; while it holds only a docstring no stage needs it
    as a dep."""
    body = _parse(init).body
    assert all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body), (
        f"src/study/{init}.py now has code: add it to the deps in dvc.yaml of every stage importing the package "
        "and relax this test")


@pytest.mark.parametrize("stage_name", list(pipeline()))
def test_each_stage_lists_exactly_the_modules_it_imports(stage_name: str):
    stage = pipeline()[stage_name]
    listed = {dep.removeprefix("src/study/").removesuffix(".py") for dep in stage.get("deps", [])
              if dep.startswith("src/study/") and dep.endswith(".py")}
    imported = modules_run_by(subcommand(stage))
    missing, extra = sorted(imported - listed), sorted(listed - imported)
    assert not missing, f"dvc.yaml stage {stage_name}: add deps {', '.join(f'src/study/{m}.py' for m in missing)}"
    assert not extra, f"dvc.yaml stage {stage_name}: {', '.join(extra)} not imported by `study " \
                      f"{subcommand(stage)}`; remove src/study/<module>.py from its deps"


@pytest.mark.parametrize("stage_name", list(pipeline()))
def test_a_stage_that_writes_the_report_lists_its_templates(stage_name: str):
    """document.py reads its wording from src/study/templates/: editing a template must rerun the report."""
    stage = pipeline()[stage_name]
    uses = "document" in modules_run_by(subcommand(stage))
    assert ("src/study/templates" in stage.get("deps", [])) == uses, (
        f"dvc.yaml stage {stage_name}: {'add' if uses else 'remove'} src/study/templates in its deps")


def test_every_stage_runs_after_the_params_are_validated():
    stages = pipeline()
    validate = stages["validate"]
    assert "experiments/study.yaml" in validate["deps"]  # the whole file: any edit is checked again
    (marker,) = validate["outs"]
    assert MARKER in marker and marker[MARKER] == {"cache": False, "persist": True}
    for name, stage in stages.items():
        if name != "validate":
            assert MARKER in stage["deps"], f"dvc.yaml stage {name}: add {MARKER} to its deps"


def test_the_marker_is_the_same_for_every_valid_params_file(tmp_path: Path):
    committed = (REPO / MARKER).read_text()
    for params in (REPO / "experiments" / "study.yaml", SMOKE):
        assert cli.main(["validate", "--params", str(params), "--out", str(tmp_path / "marker.json")]) == 0
        assert (tmp_path / "marker.json").read_text() == committed


# ---- params: the keys each stage reads --------------------------------------------------------------------------


def _leaves(params: dict, key: str) -> set[str]:
    """A params key and every key under it, down to the values (`probe` -> probe.max_margin, probe.points)."""
    value = params
    for part in key.split("."):
        value = value[part]
    if not isinstance(value, dict):
        return {key}
    return set().union(*(_leaves(params, f"{key}.{sub}") for sub in value))


def listed_params(stage_name: str, item: str | None = None) -> set[str]:
    """The params file's leaf keys a stage lists (`${item}`/`${key}` replaced by a condition's name)."""
    params = yaml.safe_load(SMOKE.read_text())
    listed = set()
    for entry in pipeline()[stage_name].get("params", []):
        for key in entry["experiments/study.yaml"]:
            key = key.replace("${item}", item or "").replace("${key}", item or "")
            listed |= _leaves(params, key)
    return listed


def _counted(frame) -> bool:
    """A read counts unless dataclasses.replace copies the field or it becomes an MLflow param (config.flatten)."""
    if frame.f_code.co_name in ("replace", "_replace") and frame.f_code.co_filename.endswith("dataclasses.py"):
        return False
    while frame is not None:
        if frame.f_code.co_name == "flatten" and frame.f_code.co_filename.endswith("config.py"):
            return False
        frame = frame.f_back
    return True


def _recording(obj, prefix: str, reads: set[str], skip: frozenset[str] = frozenset()):
    """A copy of a frozen params dataclass that adds ``prefix + field`` to ``reads`` whenever code reads a field."""
    cls = type(obj)
    names = {f.name for f in dataclasses.fields(cls)} - skip

    class Recording(cls):
        def __getattribute__(self, name):
            given = object.__getattribute__(self, "__dict__").get("_given", ())
            if name in names and name not in given and _counted(sys._getframe(1)):
                reads.add(prefix + name)
            return object.__getattribute__(self, name)

    Recording.__name__ = cls.__name__
    return Recording(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


@pytest.fixture
def record_reads(monkeypatch, tmp_path: Path) -> Callable[..., set[str]]:
    """``record(argv)``: runs `study <argv>` on the smoke params, with synthetic data in place of the prepared
    datasets, and returns the params keys (`conditions.fashion_sgd.lr_grid`, `study.seeds`) the command read."""
    from conftest import synthetic_dataset

    reads: set[str] = set()
    real_load, real_replace = config.load, dataclasses.replace

    def load(path, **overrides):
        cfg = real_load(path, **overrides)
        conditions = {name: _recording(cond, f"conditions.{name}.", reads, frozenset({"name"}))
                      for name, cond in cfg.conditions.items()}
        plain = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        plain.update(conditions=conditions, probe=_recording(cfg.probe, "probe.", reads))
        return _recording(type(cfg)(**plain), "study.", reads, frozenset({"path", "conditions", "probe"}))

    def replace(obj, /, **changes):  # a field set by replace() was read where its new value came from
        new = real_replace(obj, **changes)
        object.__setattr__(new, "_given", frozenset(changes))
        return new

    monkeypatch.setattr(config, "load", load)
    monkeypatch.setattr(dataclasses, "replace", replace)
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: synthetic_dataset(dim=784, n_test=96))
    monkeypatch.setattr(data, "prepare", lambda *args, **kwargs: {})
    tables.write_json({"lrs": {loss: 0.1 for loss in losses.names()}}, tmp_path / "lr.json")

    def record(*argv: str) -> set[str]:
        reads.clear()
        common = ["--params", str(SMOKE)]
        if argv[0] in ("tune", "train"):
            common += ["--data", str(tmp_path), "--no-tracking", "--no-progress"]
        out = ["--out", str(tmp_path / argv[0])]
        assert cli.main([*argv, *common, *out]) == 0
        params = yaml.safe_load(SMOKE.read_text())
        return set().union(*(_as_params(read, params) for read in reads - NOT_PARAMS))

    return record


def _as_params(read: str, params: dict) -> set[str]:
    """The params file's leaf keys behind one read field: a condition's inherited key is the study's, a mapping
    (a condition's `model:` block) every key under it. A condition's key left out or null is the study's, read through
    it (``seeds: null``), so the condition's own key is listed too."""
    parts = read.split(".")
    if parts[0] == "conditions" and len(parts) == 3 and parts[2] in INHERITED:
        own = params["conditions"][parts[1]]
        if parts[2] not in own:
            return {INHERITED[parts[2]]}
        if own[parts[2]] is None:
            return {INHERITED[parts[2]], *_leaves(params, read)}
    return _leaves(params, read)


def _assert_same(stage: str, read: set[str], listed: set[str]) -> None:
    missing, unread = sorted(read - listed), sorted(listed - read)
    assert not missing, f"dvc.yaml stage {stage} reads params it does not list: add {', '.join(missing)}"
    assert not unread, f"dvc.yaml stage {stage} lists params it never reads: remove {', '.join(unread)}"


def test_the_data_stage_lists_the_params_that_change_the_prepared_data(record_reads):
    _assert_same("data", record_reads("data"), listed_params("data"))


# Listed by every tune stage (a foreach stage has one list) and read by some: study.losses where the condition or a
# borrower trains the study's losses, momentum where the optimizer is sgd.
SHARED_BY_TUNING = {"study.losses", "conditions.*.momentum"}


@pytest.mark.parametrize("name", ["fashion_sgd", "fashion_adam", "fashion_noise40"])
def test_each_tune_stage_lists_exactly_the_params_its_condition_reads(record_reads, name: str):
    """Per condition (${item}), not one list for all: fashion_sgd's rates are borrowed, fashion_adam's losses are
    the study's (losses: null), fashion_noise40 lists its own."""
    read = record_reads("tune", "--condition", name)
    listed = listed_params("tune", name)
    assert f"conditions.{name}.epochs" not in read and "study.seeds" not in read
    shared = {key.replace("*", name) for key in SHARED_BY_TUNING}
    _assert_same(f"tune@{name}", read, listed - (shared - read))


def test_the_train_stage_lists_the_params_training_reads(record_reads, tmp_path: Path):
    """One stage template for every condition: each reads nothing it does not list, and every listed key is read
    by some condition (study.losses only by the conditions without their own `losses:`)."""
    unread_by_all = None
    for name in ("fashion_noise40", "mnist1d_sgd"):
        read = record_reads("train", "--condition", name, "--lrs", str(tmp_path / "lr.json"))
        listed = listed_params("train", name)
        missing = sorted(read - listed)
        assert not missing, f"dvc.yaml stage train reads params it does not list: add {', '.join(missing)}"
        unread = {key.replace(f"conditions.{name}.", "conditions.*.") for key in listed - read}
        unread_by_all = unread if unread_by_all is None else unread_by_all & unread
    assert not unread_by_all, f"dvc.yaml stage train lists params no condition reads: remove {unread_by_all}"


def test_the_probe_stage_lists_the_params_the_probe_reads(record_reads):
    _assert_same("probe", record_reads("probe"), listed_params("probe"))


# ---- the real pipeline: a bad params file loses nothing; dvc status sees what changed ----------------------------


@pytest.fixture(scope="module")
def studied(smoke_pipeline, tmp_path_factory):
    """A copy of the smoke pipeline's repository after its `dvc repro`, with every output committed to git."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    shutil.copytree(smoke_pipeline.repo, repo, symlinks=True)
    smoke = type(smoke_pipeline)(repo, smoke_pipeline.tracking_uri)
    smoke.run("git", "add", "-A")
    smoke.run("git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "results")
    assert "up to date" in smoke.dvc("status").stdout
    return smoke


def _edit_yaml(edit: Callable[[dict], None]) -> Callable[[str], str]:
    def rewrite(text: str) -> str:
        params = yaml.safe_load(text)
        edit(params)
        return yaml.safe_dump(params, sort_keys=False)

    return rewrite


BAD_PARAMS = {
    "typo_in_a_loss": (
        _edit_yaml(lambda p: p["study"].update(losses=["mse", "sigmoid_bce", "softmax_nl", "smoothed_ce"])),
        ["study.losses", "unknown loss 'softmax_nl'", "valid losses"]),
    "negative_epochs": (
        _edit_yaml(lambda p: p["conditions"]["fashion_sgd"].update(epochs=-3)),
        ["conditions.fashion_sgd.epochs", "-3", "an integer >= 1"]),
    "unknown_key": (
        _edit_yaml(lambda p: p["conditions"]["mnist1d_sgd"].update(epoch=3)),
        ["unknown key conditions.mnist1d_sgd.epoch", "check the spelling"]),
    "wrong_type": (
        _edit_yaml(lambda p: p["study"].update(confident="0.9")),
        ["study.confident", "'0.9'", "a number"]),
    "unknown_optimizer": (
        _edit_yaml(lambda p: p["conditions"]["fashion_adam"].update(optimizer="sdg")),
        ["conditions.fashion_adam.optimizer", "one of sgd, adam"]),
    "broken_yaml": (
        lambda text: text.replace("study:\n", "study:\n  [unclosed\n", 1),
        ["experiments/study.yaml", "line"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_a_bad_params_file_stops_dvc_repro_before_anything_is_deleted(studied, case: str):
    rewrite, expected = BAD_PARAMS[case]
    params = studied.repo / "experiments" / "study.yaml"
    good = params.read_text()
    params.write_text(rewrite(good))
    try:
        result = studied.dvc("repro", check=False)
        message = result.stdout + result.stderr
        assert result.returncode != 0, message
        for words in expected:
            assert words in message, f"{words!r} not in:\n{message}"
        assert "Running stage 'data'" not in message and "Running stage 'tune" not in message
        changed = studied.run("git", "status", "--porcelain").stdout.splitlines()
        assert changed == [" M experiments/study.yaml"], changed  # every committed file as it was
        status = studied.dvc("status", check=False).stdout
        assert "deleted" not in status and "not in cache" not in status, status  # every output still there
    finally:
        params.write_text(good)
    assert "up to date" in studied.dvc("status").stdout


def _stages_changed(smoke) -> set[str]:
    """Stage names `dvc status` reports, e.g. {'validate', 'tune@fashion_sgd'}."""
    return set(re.findall(r"^(\S+):\s*$", smoke.dvc("status").stdout, flags=re.MULTILINE))


@pytest.mark.slow
def test_editing_the_data_module_marks_tune_and_train_changed(studied):
    module = studied.repo / "src" / "study" / "data.py"
    source = module.read_text()
    module.write_text(source + "\n# an edit\n")
    try:
        changed = _stages_changed(studied)
    finally:
        module.write_text(source)
    conditions = yaml.safe_load((studied.repo / "experiments" / "study.yaml").read_text())["conditions"]
    tuned = yaml.safe_load((studied.repo / "experiments" / "study.yaml").read_text())["study"]["tune"]
    assert {f"tune@{c}" for c in tuned} | {f"train@{c}" for c in conditions} | {"data"} <= changed


@pytest.mark.slow
def test_a_conditions_epochs_reruns_neither_data_nor_tuning(studied):
    params = studied.repo / "experiments" / "study.yaml"
    good = params.read_text()
    params.write_text(_edit_yaml(lambda p: p["conditions"]["fashion_sgd"].update(epochs=2))(good))
    try:
        changed = _stages_changed(studied)
    finally:
        params.write_text(good)
    # validate checks the file again and its marker comes out the same, so only what reads epochs follows (and
    # the report, after the training it reads)
    assert "train@fashion_sgd" in changed and "data" not in changed, changed
    assert not [stage for stage in changed if stage.startswith("tune@") or stage.startswith("train@fashion_adam")]


def listed_by_stage(params: dict) -> dict[str, set[str]]:
    """Every stage as `dvc status` names it (`tune@fashion_sgd`) -> the params keys it lists, `${item}`/`${key}`
    replaced by its foreach item."""
    listed = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            listed[name] = {key for entry in stage.get("params", []) for key in entry["experiments/study.yaml"]}
            continue
        items = params
        for part in stage["foreach"].removeprefix("${").removesuffix("}").split("."):
            items = items[part]
        for item in items:
            listed[f"{name}@{item}"] = {key.replace("${item}", item).replace("${key}", item)
                                        for entry in stage["do"].get("params", [])
                                        for key in entry["experiments/study.yaml"]}
    return listed


def _edited(key: str, value):
    """Another value of the same kind (DVC compares values; nothing validates them here)."""
    if key == "lr_from":
        return "fashion_adam"  # another tuned condition, whose lr.json exists
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_edited"
    if isinstance(value, list):
        return [*value, *value[-1:]] or [1]
    if isinstance(value, dict):
        return {**value, "edited": 1}
    return [0]  # null


def _stages_changed_in_process(repo: Path) -> set[str]:
    """What `_stages_changed` returns, from DVC's API: without a process per call, 26 calls take half the time."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {name.rsplit(":", 1)[-1] for name in dvc.status()}  # "dvc.yaml:tune@x" (relative to the cwd)


@pytest.mark.slow
def test_each_key_of_a_condition_marks_only_the_stages_that_read_it(studied):
    """Edits every key of fashion_sgd (tuned, borrowed by fashion_heldout, its own losses) in turn: `dvc status`
    names validate (its dep is the whole file) and exactly the stages listing the key; no other condition's tune or
    train stage, except that every tune stage reads each condition's lr_from (who borrows whose rates)."""
    name = "fashion_sgd"
    params = studied.repo / "experiments" / "study.yaml"
    good = params.read_text()
    listed = listed_by_stage(yaml.safe_load(good))
    try:
        for key, value in yaml.safe_load(good)["conditions"][name].items():
            edit = {key: _edited(key, value)}
            params.write_text(_edit_yaml(lambda p, edit=edit: p["conditions"][name].update(edit))(good))
            changed = _stages_changed_in_process(studied.repo)
            edited = f"conditions.{name}.{key}"
            expected = {stage for stage, keys in listed.items()
                        if any(edited == k or edited.startswith(k + ".") for k in keys)}
            assert changed == expected | {"validate"}, (key, sorted(changed ^ (expected | {"validate"})))
            others = {stage for stage in changed if "@" in stage and stage.split("@")[1] != name}
            if key == "lr_from":
                others -= {f"tune@{c}" for c in yaml.safe_load(good)["study"]["tune"]}
            assert not others, f"editing {edited} marks {sorted(others)}"
    finally:
        params.write_text(good)
    assert "up to date" in studied.dvc("status").stdout


@pytest.mark.slow
def test_dvc_metrics_show_prints_a_row_per_condition_within_160_columns(studied):
    """Each condition's test accuracy file is a row, each loss a column (metrics.json in one row was 3,000 wide)."""
    conditions = yaml.safe_load((studied.repo / "experiments" / "study.yaml").read_text())["conditions"]
    for options in ([], ["--md"]):
        lines = studied.dvc("metrics", "show", *options).stdout.strip().splitlines()
        rows = [line for line in lines if "results/test_accuracy/" in line]
        assert sorted(row.strip("| ").split()[0] for row in rows) == sorted(
            f"results/test_accuracy/{c}.json" for c in conditions), lines
        assert max(map(len, lines)) <= 160, "\n".join(lines)


@pytest.mark.browser
def test_dvc_plots_show_draws_every_condition_without_network(studied):
    """`dvc plots show` writes its page from .dvc/plots/offline.html, which carries vega itself (DVC's own page loads
    it from a CDN): every condition's curves are drawn with every request that leaves the disk refused."""
    from playwright.sync_api import sync_playwright

    from test_browser import CHROMIUM_FLAGS, find_chromium

    studied.dvc("plots", "show", "-o", "dvc_plots")
    page_file = studied.repo / "dvc_plots" / "index.html"
    assert "cdn." not in page_file.read_text()
    conditions = yaml.safe_load((studied.repo / "experiments" / "study.yaml").read_text())["conditions"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            outside, errors = [], []
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else (outside.append(route.request.url), route.abort()))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_file.as_uri(), wait_until="load")
            page.wait_for_function(f"document.querySelectorAll('body > div canvas').length >= {len(conditions)}",
                                   timeout=15_000)  # vega draws each chart on a canvas
            sizes = page.evaluate("Array.from(document.querySelectorAll('body > div canvas')).map(c => c.width)")
        finally:
            browser.close()
    assert not outside and not errors, (outside, errors)
    assert len(sizes) == len(conditions) and min(sizes) > 100, sizes
    for condition in conditions:
        assert f"{condition}: validation accuracy" in page_file.read_text()
