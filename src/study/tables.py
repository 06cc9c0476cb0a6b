"""Column names and file formats under ``results/``: records to long DataFrames and back.

Serves the CLI and the report; imports only ``study.records`` from the study.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from study.records import ExampleStats, Record

KEYS = ["condition", "dataset", "loss", "lr", "seed"]
HISTORY_COLUMNS = [*KEYS, "epoch", "step", "split", "metric", "value"]
EXAMPLE_COLUMNS = [
    *KEYS, "epoch", "step", "split", "index", "label", "predicted", "p_true", "confidence", "loss_value",
    "logit_grad_norm",
]

# File names inside results/<condition>/ (the directory itself is a CLI argument, written once in dvc.yaml).
HISTORY = "history.csv"  # train stage: long scalars, HISTORY_COLUMNS
EXAMPLES = "examples.parquet"  # train stage: per-example probe/test measurements, EXAMPLE_COLUMNS
SUMMARY = "summary.csv"  # train stage: one row per run
SUMMARY_PREFIXES = ("final_", "best_", "steps_to", "test_accuracy_at")  # summary.csv columns logged as run metrics
CURVES = "curves.csv"  # train stage: mean validation accuracy per loss and step, for `dvc plots show`
SETUP = "setup.json"  # train stage: the condition's resolved params, data sizes and learning rates
TUNE = "tune.csv"  # tune stage: validation history of the lr grid, HISTORY_COLUMNS
LRS = "lr.json"  # tune stage: {"source": condition, "lrs": {loss: lr}, "criterion": ...}


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def history_frame(records: Iterable[Record], *, condition: str, dataset: str) -> pd.DataFrame:
    rows = [
        (condition, dataset, r.loss, r.lr, r.seed, r.epoch, r.step, r.split, r.metric, r.value) for r in records
    ]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return frame.astype({"lr": float, "seed": int, "epoch": float, "step": int, "value": float})


def examples_frame(stats: Iterable[ExampleStats], *, condition: str, dataset: str) -> pd.DataFrame:
    parts = []
    for s in stats:
        n = len(s.index)
        parts.append(pd.DataFrame({
            "condition": condition, "dataset": dataset, "loss": s.loss, "lr": s.lr, "seed": s.seed,
            "epoch": s.epoch, "step": s.step, "split": s.split,
            "index": s.index.astype(np.int32), "label": s.label.astype(np.int16),
            "predicted": s.predicted.astype(np.int16), "p_true": s.p_true.astype(np.float32),
            "confidence": s.confidence.astype(np.float32), "loss_value": s.loss_value.astype(np.float32),
            "logit_grad_norm": s.logit_grad_norm.astype(np.float32),
        }, index=pd.RangeIndex(n)))
    if not parts:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[EXAMPLE_COLUMNS]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, compression="zstd")


def write_json(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_history(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"condition": str, "dataset": str, "loss": str, "split": str, "metric": str})


def read_examples(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_lrs(path: Path) -> dict[str, float]:
    """The tuned learning rate per loss, from a tune stage's ``lr.json``."""
    return {loss: float(lr) for loss, lr in read_json(path)["lrs"].items()}


def curves(history: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy per loss and step, averaged over seeds: the long ``step, loss, val_accuracy`` table
    that DVC's ``by_loss`` plot template draws as one line per loss."""
    val = history[(history["split"] == "val") & (history["metric"] == "accuracy")]
    mean = val.groupby(["loss", "step"], sort=False)["value"].mean().reset_index()
    return mean.rename(columns={"value": "val_accuracy"})[["step", "loss", "val_accuracy"]]
