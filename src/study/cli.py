"""``study``: one subcommand per pipeline stage (parse, load, call, write), plus the operations of ``study.ops``
(benches, budget, power, tracking server, dashboard)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from study import config, tables
from study.config import ConfigError, StudyConfig
from study.data import DataError

INTERRUPTED_EXIT = 130  # what a shell reports for a process stopped by SIGINT
VALID_MARKER = {"params": "valid"}  # what `study validate` writes: the same for every valid params file


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ConfigError, DataError) as err:
        print(f"study {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"study {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return status or 0  # a command returns its exit status where it has one


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str, *, out: str | None = None) -> argparse.ArgumentParser:
        """A subcommand; ``out`` is the help of its required --out (the path it writes), where it has one."""
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if out is not None:
            p.add_argument("--out", type=Path, required=True, help=out)
        return p

    def with_params(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", type=Path, required=True, help="params file, e.g. experiments/study.yaml")

    def with_condition(p: argparse.ArgumentParser) -> None:
        with_params(p)
        p.add_argument("--condition", required=True, help="a condition of the params file, e.g. fashion_sgd")
        p.add_argument("--data", type=Path, required=True, help="directory the data stage prepared")
        p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow (overrides the params)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    stages = (  # name, function, help, help of --out, what it reads
        ("validate", validate_cmd, "check the whole params file; write a marker whose content never changes",
         "marker file the other stages depend on", with_params),
        ("data", data_cmd, "verify and prepare every dataset the conditions use", "directory to prepare the data in",
         with_params),
        ("tune", tune_cmd, "train each loss over the lr grid on the validation split; pick its lr",
         "the condition's results directory", with_condition),
        ("train", train_cmd, "train every loss x seed of a condition in lockstep with the tuned lrs",
         "the condition's results directory", with_condition),
        ("probe", probe_cmd, "closed-form loss and logit gradient against confidence; analytic claims",
         "directory for penalty.csv and claims.csv", with_params),
    )
    for name, func, about, out, reads in stages:
        reads(command(name, func, about, out=out))
    train = sub.choices["train"]
    train.add_argument("--lrs", type=Path, required=True, help="lr.json written by the tune stage")
    train.add_argument("--checkpoint", type=Path, default=None, help="where an interrupted run saves and resumes")

    p = command("report", report_cmd, "figures, report.md, index.html, metrics.json, test accuracies: from results/",
                out="report directory")
    with_params(p)
    p.add_argument("--results", type=Path, required=True, help="directory holding one results folder per condition")
    p.add_argument("--probe", type=Path, required=True, help="the probe stage's output directory")
    p.add_argument("--metrics", type=Path, required=True, help="JSON file of the headline numbers to write")
    p.add_argument("--accuracy", type=Path, default=None,
                   help="directory for <condition>.json, each loss's test accuracy (DVC's metrics)")

    p = command("compare", compare_cmd, "set a rerun's results beside these: rate choices, findings, verdicts")
    p.add_argument("first", type=Path, help="a results directory (conditions/, probe/, report/), e.g. results")
    p.add_argument("second", type=Path, help="the rerun's results directory, written with the same params")
    p.add_argument("--params", type=Path, default=Path("experiments/study.yaml"),
                   help="the params both runs used (default: %(default)s)")

    p = command("bench", bench_cmd, "measure the lockstep trainer against per-model loops, side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--data", type=Path, default=Path("data"), help="directory the data stage prepared")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="time budget of each measurement; the bench takes about 67 of them plus set-up "
                        "(default: %(default)s)")

    p = command("cluster-bench", cluster_bench_cmd,
                "measure the Ray executor: its start, per-task overhead, one condition's shards on 1 vs 2 workers")
    p.add_argument("--params", type=Path, default=Path("experiments/study.yaml"), help="(default: %(default)s)")
    p.add_argument("--condition", default="fashion_sgd", help="shrunk to one short epoch (default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("data"), help="directory the data stage prepared")

    p = command("budget", budget_cmd, "the study's arithmetic: the FLOPs each stage asks for and the time they take "
                "at a matmul rate")
    p.add_argument("--params", type=Path, default=Path("experiments/study.yaml"), help="(default: %(default)s)")
    p.add_argument("--data", type=Path, default=Path("data"), help="directory the data stage prepared")
    p.add_argument("--peak-gflops", type=float, help="matmul rate; default: measured now (study bench's)")
    p.add_argument("--wall-seconds", type=float, help="a measured wall time of the same params, to compare")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    p = command("power", power_cmd, "the seeds that would decide each undecided primary comparison, simulated under "
                "the study's own rule")
    p.add_argument("--results", type=Path, default=Path("results/conditions"),
                   help="directory holding one results folder per condition (default: %(default)s)")
    p.add_argument("--probe", type=Path, default=Path("results/probe"),
                   help="the probe stage's output directory (default: %(default)s)")
    p.add_argument("--draws", type=int, default=200, help="simulated reruns per seed count (default: %(default)s)")

    p = command("tracking-server", tracking_server_cmd,
                "start, stop or ask after a team's MLflow tracking server on PostgreSQL (make tracking-server)")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("root", type=Path, help="directory of the server's data, logs and artifacts, e.g. .tracking")
    p.add_argument("--port", type=int, help="mlflow server's port (default: $STUDY_TRACKING_PORT, else 5001)")
    p.add_argument("--pg-port", type=int, help="PostgreSQL's port (default: $STUDY_PG_PORT, else 5433)")
    p.add_argument("--workers", type=int, default=2, help="mlflow server worker processes (default: %(default)s)")

    def with_results(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", type=Path, default=Path("experiments/study.yaml"),
                       help="the params the results were produced with (default: %(default)s)")
        p.add_argument("--results", type=Path, default=Path("results/conditions"),
                       help="directory holding one results folder per condition (default: %(default)s)")

    p = command("import-results", import_results_cmd,
                "log the finished stages under results/ to MLflow as training does, unless the store holds them")
    with_results(p)

    p = command("dashboard", dashboard_cmd,
                "start the MLflow dashboard on the study's store and import what it lacks of results/ meanwhile")
    with_results(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5000)
    return parser


# ---- stages -------------------------------------------------------------------------------------------------


def validate_cmd(args: argparse.Namespace) -> None:
    """The pipeline's first stage. DVC deletes a stage's outputs before running it, so a typo found inside a later
    stage would cost that stage's results; every stage depends on this one instead, and a bad params file stops
    the pipeline here. The marker's content is fixed, so valid edits to the params rerun nothing downstream."""
    config.load(args.params)
    tables.write_json(VALID_MARKER, args.out)


def data_cmd(args: argparse.Namespace) -> None:
    from study import data

    cfg = config.load(args.params)
    datasets = sorted({cond.dataset for cond in cfg.conditions.values()})
    manifest = {name: data.prepare(name, cfg.data_dir, args.out) for name in datasets}
    tables.write_json(manifest, args.out / "manifest.json")


def tune_cmd(args: argparse.Namespace) -> None:
    from study import runner

    cfg, cond = _load(args)
    if cond.name not in cfg.tune:
        raise ConfigError(f"{cfg.path}: {cond.name} is not in study.tune; its learning rates come from {cond.lr_from}")
    runner.tune(cfg, cond, data_root=args.data, out=args.out, tracking=not args.no_tracking,
                progress=not args.no_progress)


def train_cmd(args: argparse.Namespace) -> None:
    from study import runner

    cfg, cond = _load(args)
    lrs = _read_lrs(args.lrs, cond)
    tuned = tables.read_json(args.lrs)
    runner.train_condition(cfg, cond, lrs, data_root=args.data, out=args.out, checkpoint=args.checkpoint,
                           tracking=not args.no_tracking, progress=not args.no_progress,
                           unstable=tuned.get("unstable", {}), grids=tuned.get("grids"))


def probe_cmd(args: argparse.Namespace) -> None:
    from study import probe

    cfg = config.load(args.params)
    # Every loss any condition trains, each with its registered options (study.losses), the ones training binds.
    names = dict.fromkeys([*cfg.losses, *(loss for cond in cfg.conditions.values() for loss in cond.losses)])
    sweep = probe.sweep(list(names), max_margin=cfg.probe.max_margin, points=cfg.probe.points)
    tables.write_csv(sweep, args.out / "penalty.csv")
    tables.write_csv(probe.claims(), args.out / "claims.csv")


def report_cmd(args: argparse.Namespace) -> None:
    from study import document

    cfg = config.load(args.params)
    document.build(args.results, args.probe, list(cfg.conditions), args.out, args.metrics, args.accuracy)


def compare_cmd(args: argparse.Namespace) -> None:
    from study import rerun

    cfg = config.load(args.params)
    for root in (args.first, args.second):
        if not (root / "report" / "report.md").exists():
            raise ConfigError(f"{root}/report/report.md is missing: pass a results directory the pipeline wrote "
                              "(its report stage included)")
    print(rerun.compare(args.first, args.second, list(cfg.conditions)).summary())


def bench_cmd(args: argparse.Namespace) -> None:
    from study.ops import bench

    bench.main(data_root=args.data, as_json=args.json, seconds=args.seconds)


def cluster_bench_cmd(args: argparse.Namespace) -> None:
    from study.ops import cluster_bench

    cluster_bench.main(params=args.params, condition=args.condition, data_root=args.data)


def budget_cmd(args: argparse.Namespace) -> None:
    from study.ops import budget

    budget.main(params=args.params, data_root=args.data, peak_gflops=args.peak_gflops,
                wall_seconds=args.wall_seconds, as_json=args.json)


def power_cmd(args: argparse.Namespace) -> None:
    from study.ops import power

    power.main(results=args.results, probe=args.probe, draws=args.draws)


def tracking_server_cmd(args: argparse.Namespace) -> int:
    from study.ops import server

    return server.main(args.action, args.root, port=args.port, pg_port=args.pg_port, workers=args.workers)


def import_results_cmd(args: argparse.Namespace) -> None:
    from study import run_identity
    from study.ops import rebuild

    uri = run_identity.default_uri()
    if not rebuild.rebuild(config.load(args.params), args.results, uri, say=_say(args)):
        print(f"study import-results: the store ({run_identity.redact(uri)}) already holds every finished stage under "
              f"{args.results}", file=sys.stderr)


def dashboard_cmd(args: argparse.Namespace) -> int:
    from study.ops import dashboard

    return dashboard.serve(config.load(args.params), args.results, host=args.host, port=args.port, say=_say(args))


# ---- helpers ------------------------------------------------------------------------------------------------


def _say(args: argparse.Namespace):
    return lambda text: print(f"study {args.command}: {text}", file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[StudyConfig, config.Condition]:
    overrides = {"tracking": False} if args.no_tracking else {}
    cfg = config.load(args.params, **overrides)
    return cfg, cfg.condition(args.condition)


def _read_lrs(path: Path, cond: config.Condition) -> dict[str, float]:
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the tune stage first (dvc repro runs it), or pass --lrs")
    lrs = tables.read_lrs(path)
    missing = [loss for loss in cond.losses if loss not in lrs]
    if missing:
        raise ConfigError(f"{path} has no tuned lr for {', '.join(missing)}: rerun the tune stage for these losses")
    return lrs


if __name__ == "__main__":
    raise SystemExit(main())
