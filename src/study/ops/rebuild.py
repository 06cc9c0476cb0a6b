"""The MLflow store rebuilt from ``results/``: the parent and child runs, params, tags and metric histories that
training logs, read back from the tables, so that a fresh clone's dashboard shows the committed study without
retraining. Every imported run is tagged ``imported_from`` (the results directory), ``imported_commit`` and
``imported_sha256`` (of the files read), which tells a later import that the store holds these results already, and
``clock`` (results/ hold no training times: the runs are dated by the commit of the results).

Serves ``cli``; the runs' tags and params are ``tracking``'s (the ones training logs). An SQL store is written in
bulk (``mlflow_store.insert_runs``, ``finish_runs``: a few statements per stage); a store behind a tracking server
through the tracker training uses. Reads through ``tables``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study import losses, run_identity, tables, tracking
from study.config import ConfigError, StudyConfig, flatten
from study.mlflow_store import NewRun, connect, ensure_experiment, finish_runs, insert_runs, retry, sql_store
from study.records import Record


@dataclass(frozen=True)
class Stage:
    """A finished stage of one condition, as results/ holds it."""

    condition: str
    stage: str  # train | tune
    directory: Path

    @property
    def parent(self) -> str:
        """The parent run's name, ``<condition>/<stage>``."""
        return f"{self.condition}/{self.stage}"

    @property
    def table(self) -> Path:
        return self.directory / (tables.HISTORY if self.stage == "train" else tables.TUNE)

    @property
    def artifacts(self) -> list[Path]:
        """What the stage attaches to its parent run."""
        if self.stage == "train":
            return [self.directory / tables.SUMMARY, self.directory / tables.SETUP]
        return [self.directory / tables.LRS]

    def fingerprint(self) -> str:
        """sha256 over the files an import reads."""
        digest = hashlib.sha256()
        for path in [self.table, *self.artifacts]:
            digest.update(path.read_bytes())
        return digest.hexdigest()


def stages(cfg: StudyConfig, results: Path) -> list[Stage]:
    """The finished stages under ``results`` (one directory per condition), in the params' order: tune where
    tune.csv and lr.json exist, train where history.csv, summary.csv and setup.json exist."""
    found = []
    for condition in cfg.conditions:
        for stage in ("tune", "train"):
            candidate = Stage(condition, stage, Path(results) / condition)
            if all(path.is_file() for path in [candidate.table, *candidate.artifacts]):
                found.append(candidate)
    return found


def missing(cfg: StudyConfig, results: Path, uri: str) -> list[Stage]:
    """The finished stages the store lacks: it holds a stage when a FINISHED parent run of it was trained into
    this store (training writes the results it logs) or imported from these very files."""
    found = stages(cfg, results)
    held = tracking.finished_parents(uri, cfg.experiment, [s.parent for s in found])

    def holds(stage: Stage) -> bool:
        tags = held[stage.parent]
        return any("imported_from" not in t for t in tags) or any(
            t.get("imported_sha256") == stage.fingerprint() for t in tags)

    return [s for s in found if not holds(s)]


@dataclass(frozen=True)
class Table:
    """One stage's table read back: its child runs in the trainer's grid order, its rows, (train) the summaries."""

    runs: list[tracking.RunSpec]
    history: pd.DataFrame
    summaries: dict[str, dict[str, float]]

    @classmethod
    def read(cls, cfg: StudyConfig, stage: Stage) -> Table:
        cond = cfg.condition(stage.condition)
        history = tables.read_history(stage.table)
        grid = cfg.tuned_losses(cond.name) if stage.stage == "tune" else cond.losses
        order = {loss: i for i, loss in enumerate(grid)}
        keys = sorted(set(zip(history["loss"], history["lr"], history["seed"], strict=True)),
                      key=lambda key: (order[key[0]], key[1], key[2]))  # the trainer's grid order
        # Each run's conventions from its loss's registry entry, as training logs them.
        runs = [tracking.RunSpec(loss, lr, int(seed), tuned=stage.stage == "train",
                                 conventions=dict(losses.spec(loss).conventions))
                for loss, lr, seed in keys]
        summaries = {}
        if stage.stage == "train":
            summary = pd.read_csv(stage.directory / tables.SUMMARY)
            for row in summary.to_dict("records"):
                summaries[row["run"]] = {key: float(value) for key, value in row.items()
                                         if key.startswith(tables.SUMMARY_PREFIXES) and math.isfinite(value)}
        return cls(runs, history, summaries)


def stage_runs(cfg: StudyConfig, stage: Stage, table: Table, tags: dict[str, str]) -> tracking.StageRuns:
    """The stage's runs as training opens them: a parent run with the condition's params, a child run per (loss,
    lr, seed), tagged ``tags`` and the ``imported_*`` tags."""
    return tracking.StageRuns(
        experiment=cfg.experiment, condition=stage.condition, stage=stage.stage,
        dataset=cfg.condition(stage.condition).dataset, params=flatten(cfg, stage.condition), runs=table.runs,
        tags={**imported_tags(stage.directory), "imported_sha256": stage.fingerprint(), **tags})


def fill_stage(tracker: tracking.Tracker, stage: Stage, table: Table) -> int:
    """Every row of the table as a metric of its child run at its step, (train) the summary metrics, and the
    parent's artifacts. Returns the number of metric values sent."""
    columns = ["loss", "lr", "seed", "epoch", "step", "split", "metric", "value"]
    records = [Record(*row) for row in table.history[columns].itertuples(index=False, name=None)]
    tracker.log(records)
    for run, metrics in table.summaries.items():
        tracker.set_summary(run, metrics)
    tracker.log_artifacts(stage.artifacts)
    return len(records) + sum(map(len, table.summaries.values()))


def committed_ms(directory: Path) -> int | None:
    """When git last committed a file under ``directory`` (ms since the epoch); None outside git or uncommitted.
    results/ hold no clock of their own (history.csv counts steps, setup.json holds no times), so this is the
    closest honest date of a training: when its results were committed, some time after it ended."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%ct", "--", str(directory)], cwd=run_identity.repo_root(),
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out.stdout.strip()) * 1000 if out.stdout.strip().isdigit() else None


def imported_tags(directory: Path) -> dict[str, str]:
    """``imported_from``: the directory, relative to the repository; ``imported_commit``: the commit it was read at,
    suffixed ``-dirty`` when the directory differs from that commit (git's own convention)."""
    root = run_identity.repo_root()
    where = os.path.relpath(Path(directory).resolve(), root)

    def git(*argv: str) -> str:
        try:
            out = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", where):
        commit += "-dirty"
    return {"imported_from": where, "imported_commit": commit}


def check(cfg: StudyConfig, stage: Stage) -> None:
    """Refuse results that other params produced: the runs are logged with the params file's params."""
    grid = pd.read_csv(stage.table, usecols=["loss", "lr"]).drop_duplicates()
    cond = cfg.condition(stage.condition)
    differ = []
    if not set(grid["loss"]) <= set(cfg.tuned_losses(cond.name) if stage.stage == "tune" else cond.losses):
        differ.append("losses")
    # tuning's rates: the grid and the factor-2 extensions beyond its edges that lr_extend allows (runner.GRID_RULE)
    reachable = [*cond.lr_grid, *(edge for k in range(1, cond.lr_extend + 1)
                                  for edge in (min(cond.lr_grid) / 2**k, max(cond.lr_grid) * 2**k))]
    if stage.stage == "tune" and not all(any(math.isclose(lr, x) for x in reachable) for lr in grid["lr"]):
        differ.append(f"conditions.{stage.condition}.lr_grid")
    source = stage.table
    if stage.stage == "train":
        source = stage.directory / tables.SETUP
        setup = tables.read_json(source)
        current = {"losses": list(cond.losses), "seeds": list(cond.seeds),
                   **{f"conditions.{stage.condition}.{k}": v for k, v in dataclasses.asdict(cond).items()}}
        written = {"losses": setup["losses"], "seeds": setup["seeds"],
                   **{f"conditions.{stage.condition}.{k}": v for k, v in setup["params"].items()}}
        differ += [key for key in current.keys() & written.keys() if _plain(current[key]) != _plain(written[key])]
    if differ:
        raise ConfigError(f"{source} was written with other params than {cfg.path} ({', '.join(sorted(set(differ)))}):"
                          " check out the params the results were produced with, or rerun `dvc repro`")


def _date(ms: int | None) -> str:
    return "now (they differ from git)" if ms is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def _plain(value):
    """As JSON wrote it: tuples become lists at any depth (a `model:` block holds its widths as a tuple)."""
    return json.loads(json.dumps(value))


def rebuild(cfg: StudyConfig, results: Path, uri: str, say) -> list[Stage]:
    """Import every finished stage under ``results`` the store does not hold yet; ``say(text)`` reports progress.
    Returns the stages imported."""
    todo = missing(cfg, results, uri)
    if not todo:
        return []
    for stage in todo:  # all of them before the first run is created
        check(cfg, stage)
    dirty = any(imported_tags(stage.directory)["imported_commit"].endswith("-dirty") for stage in todo)
    dated = None if dirty else committed_ms(results)
    say(f"the store lacks {', '.join(s.parent for s in todo)}: importing them from {results} "
        f"(tagged imported_from, imported_commit; dated {_date(dated)}, when the results were committed)")
    started = time.monotonic()
    read = [(stage, Table.read(cfg, stage)) for stage in todo]
    client = connect(uri)
    store = sql_store(client)
    clock = {"clock": "not recorded: results/ hold no training times; start and end are "
                      + ("the import's" if dated is None else "the commit of the results")}
    load = _load if store is not None else _load_through_tracker
    sent = load(cfg, read, uri, dated, clock, lambda text: say(f"{text} ({time.monotonic() - started:.1f} s)"))
    say(f"imported {len(todo)} stages, {sent:,} metric values in {time.monotonic() - started:.1f} s")
    return todo


def _load(cfg: StudyConfig, read: list[tuple[Stage, Table]], uri: str, dated: int | None, clock: dict[str, str],
          say) -> int:
    """Into an SQL store, in bulk: every stage's runs in one transaction (the dashboard lists them all at once),
    then each stage's metric histories in one transaction that also ends its runs FINISHED. Interrupted (Ctrl-C,
    SIGTERM), the stage being loaded is rolled back and the runs not loaded end KILLED. Returns the metric values."""
    client = connect(uri)
    store = sql_store(client)
    experiment_id = ensure_experiment(client, uri, cfg.experiment)
    when = dated if dated is not None else int(time.time() * 1000)
    runs, loads = [], []
    for stage, table in read:
        layout = stage_runs(cfg, stage, table, {**clock})
        tracking.end_stale_runs(client, experiment_id, layout.owner)  # an import killed before
        children = tracking.Children(experiment_id, uuid.uuid4().hex, layout, layout.shared_tags())
        ids = {spec.run: uuid.uuid4().hex for spec in table.runs}
        runs.append(NewRun(children.parent_id, layout.parent, when, children.shared, layout.safe_params()))
        runs += [NewRun(run_id, run, when - 1 - index, children.tags(run), children.params(run))
                 for index, (run, run_id) in enumerate(ids.items())]  # 1 ms apart: parents list first
        loads.append((stage, table, children.parent_id, ids))
    insert_runs(store, experiment_id, runs)
    say(f"created the {len(runs)} runs of {len(read)} stages; now their metric histories")
    sent, left = 0, [run.run_id for run in runs]
    try:
        for done, (stage, table, parent_id, ids) in enumerate(loads, 1):
            metrics, tags = metric_rows(table, ids, when)
            finish_runs(store, [parent_id, *ids.values()], "FINISHED", when, metrics, tags)
            left = [run_id for run_id in left if run_id != parent_id and run_id not in ids.values()]
            for path in stage.artifacts:
                retry(client.log_artifact, parent_id, str(path))
            sent += len(metrics)
            say(f"imported {stage.parent} ({done}/{len(loads)})")
    except BaseException:
        finish_runs(store, left, "KILLED", int(time.time() * 1000))
        raise
    return sent


def metric_rows(table: Table, ids: dict[str, str], when: int) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """What the tracker logs for a stage's table, as rows ``run_uuid, key, value, timestamp, step`` (each row of
    the table at its step, the speed metric, the summary metrics at each run's last step), and the tags its values
    set, by run id."""
    history = table.history
    by_key = {(spec.loss, spec.lr, spec.seed): ids[spec.run] for spec in table.runs}
    rows = pd.DataFrame({
        "run_uuid": [by_key[key] for key in zip(history["loss"], history["lr"], history["seed"], strict=True)],
        "key": (history["split"] + "/" + history["metric"]).to_numpy(),
        "value": history["value"].astype(float).to_numpy(),
        "timestamp": when,
        "step": history["step"].astype(int).to_numpy(),
    })
    speed = rows[rows["key"] == tracking.SPEED_SOURCE].assign(
        key=tracking.SPEED_METRIC, step=lambda f: [tracking.speed_step(step) for step in f["step"]])
    last = rows.groupby("run_uuid")["step"].max()
    summary = pd.DataFrame([{"run_uuid": ids[run], "key": key, "value": value, "timestamp": when,
                             "step": int(last.get(ids[run], 0))}
                            for run, metrics in table.summaries.items() for key, value in metrics.items()],
                           columns=rows.columns)
    tags: dict[str, dict[str, str]] = {}
    for run_id, key, value in rows[rows["key"].isin(tracking.EVENT_METRICS)][["run_uuid", "key", "value"]].itertuples(
            index=False):
        if event := tracking.event_tags(key, value):
            tags.setdefault(run_id, {}).update(event)
    return pd.concat([rows, speed, summary], ignore_index=True), tags


def _load_through_tracker(cfg: StudyConfig, read: list[tuple[Stage, Table]], uri: str, dated: int | None,
                          clock: dict[str, str], say) -> int:
    """Into a store behind a tracking server, through the tracker training uses: every stage's runs first, then
    their metric histories stage by stage. Returns the metric values sent."""
    with contextlib.ExitStack() as all_open:
        opened = []
        for stage, table in read:
            stack = all_open.enter_context(contextlib.ExitStack())  # closed below, or by all_open on an error
            tracker = stack.enter_context(tracking.open_tracker(
                enabled=True, uri=uri, dated_ms=dated, **vars(stage_runs(cfg, stage, table, clock))))
            opened.append((stage, table, stack, tracker))
        say(f"created the {sum(len(table.runs) + 1 for _, table in read)} runs of {len(read)} stages; now their "
            "metric histories")
        sent = 0
        for done, (stage, table, stack, tracker) in enumerate(opened, 1):
            sent += fill_stage(tracker, stage, table)
            stack.close()  # sends what is queued and ends the stage's runs FINISHED
            say(f"imported {stage.parent} ({done}/{len(opened)})")
    return sent
