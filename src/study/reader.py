"""Reads the report's inputs from the files under ``results/`` alone (the train, tune and probe stages' tables),
cleaned, with notes on what was missing or dropped; never reads MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis, measures, tables

PENALTY = "penalty.csv"


CLAIMS = "claims.csv"


@dataclass
class Inputs:
    """Everything the report reads, cleaned. ``notes`` says what was missing or dropped (dicts whose ``kind`` names
    their macro in templates/findings.md.j2)."""

    conditions: list[str]
    history: pd.DataFrame
    examples: pd.DataFrame
    setups: dict[str, dict]
    targets: dict[str, tuple[float, ...]]
    lrs: dict[str, dict[str, float]]  # condition -> loss -> learning rate it trained with
    sources: dict[str, str]  # condition -> condition whose tuning chose its learning rates
    tuning: dict[str, dict]  # tuning condition -> its lr.json
    tune: pd.DataFrame | None
    penalty: pd.DataFrame | None
    claims: pd.DataFrame | None
    notes: list[dict] = field(default_factory=list)


def _required(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the {stage} stage writes it (run `dvc repro` or "
                                f"`python -m study {stage}` for that condition first)")
    return path


def load(results: Path, probe: Path, conditions: Sequence[str]) -> Inputs:
    """Read and clean the tables of ``conditions`` (``results/<condition>/``) and of the probe stage (``probe/``);
    optional inputs may be missing."""
    results, probe = Path(results), Path(probe)
    if not conditions:
        raise ValueError("no conditions to report on")
    notes: list[dict] = []
    histories, examples, setups = [], [], {}
    for condition in conditions:
        directory = results / condition
        setups[condition] = tables.read_json(_required(directory / tables.SETUP, "train"))
        history, dropped = measures.drop_nonfinite(tables.read_history(_required(directory / tables.HISTORY, "train")))
        if dropped:
            notes.append({"kind": "dropped_values", "source": condition, "count": dropped, "file": tables.HISTORY})
        histories.append(history)
        path = directory / tables.EXAMPLES
        if path.exists():
            frame = tables.read_examples(path)
            needed = frame[["p_true", "confidence", "logit_grad_norm"]].to_numpy(dtype=float)
            keep = np.isfinite(needed).all(axis=1)
            if not keep.all():
                notes.append({"kind": "dropped_examples", "source": condition, "count": int((~keep).sum()),
                              "file": tables.EXAMPLES})
            examples.append(frame[keep])
        else:
            notes.append({"kind": "missing_examples", "source": condition, "file": tables.EXAMPLES})
    history = pd.concat(histories, ignore_index=True)
    history = history.astype({"lr": float, "seed": int, "step": int, "epoch": float, "value": float})
    example_frame = (pd.concat(examples, ignore_index=True) if examples
                     else pd.DataFrame(columns=tables.EXAMPLE_COLUMNS))
    example_frame = example_frame.astype({"lr": float, "seed": int, "step": int, "p_true": float,
                                          "confidence": float, "loss_value": float, "logit_grad_norm": float})

    targets = {c: tuple(float(t) for t in setups[c].get("params", {}).get("targets", ())) for c in conditions}
    lrs, sources = {}, {}
    for condition in conditions:
        trained = history[history["condition"] == condition].groupby("loss")["lr"].first()
        lrs[condition] = {loss: float(lr) for loss, lr in trained.items()}
        sources[condition] = str(setups[condition].get("lr_source") or setups[condition].get("params", {}).get(
            "lr_from") or condition)

    tuning, tunes = {}, []
    for source in dict.fromkeys(sources.values()):
        lr_path, tune_path = results / source / tables.LRS, results / source / tables.TUNE
        if lr_path.exists():
            tuning[source] = tables.read_json(lr_path)
        if tune_path.exists():
            tune, dropped = measures.drop_nonfinite(tables.read_history(tune_path))
            if dropped:
                notes.append({"kind": "dropped_values", "source": source, "count": dropped, "file": tables.TUNE})
            tunes.append(tune.astype({"lr": float, "seed": int, "step": int, "value": float}))
        else:
            notes.append({"kind": "missing_tune", "source": source, "file": tables.TUNE})
    tune_frame = pd.concat(tunes, ignore_index=True) if tunes else None

    penalty = claims = None
    if (probe / PENALTY).exists():
        penalty = pd.read_csv(probe / PENALTY)
        penalty = penalty[np.isfinite(penalty[["p_true", "loss_value", "logit_grad_norm"]].to_numpy(float)).all(1)]
    else:
        notes.append({"kind": "missing_penalty", "file": PENALTY})
    if (probe / CLAIMS).exists():
        claims = pd.read_csv(probe / CLAIMS, dtype=str, keep_default_na=False)
    else:
        notes.append({"kind": "missing_claims", "file": CLAIMS})
    return Inputs(list(conditions), history, example_frame, setups, targets, lrs, sources, tuning, tune_frame,
                  penalty, claims, notes)


def _noise_conditions(inputs: Inputs) -> list[str]:
    found = set(inputs.history.loc[inputs.history["split"] == "train_flipped", "condition"])
    return [c for c in inputs.conditions if c in found]


def _chosen(inputs: Inputs, source: str) -> dict[str, float]:
    """The learning rates a tuning condition chose: its lr.json, else what its training used."""
    if source in inputs.tuning:
        return {loss: float(lr) for loss, lr in inputs.tuning[source].get("lrs", {}).items()}
    return dict(inputs.lrs.get(source, {}))


def _bins(inputs: Inputs, condition: str) -> int:
    return int(inputs.setups[condition].get("ece_bins", 15))


def _confident(inputs: Inputs) -> float:
    return float(next((s["confident"] for s in inputs.setups.values() if "confident" in s), analysis.CONFIDENT))

