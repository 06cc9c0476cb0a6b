"""The quantity registry: one ``Quantity`` per per-seed quantity the report compares between losses, the only place
a quantity's name is spelled (the twin of the loss registry in ``study.losses``). Imports nothing from the study
and no torch: training, the statistics and the report all read it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# How a quantity is read from a model's history (``Quantity.reading``).
READINGS = (
    "last",  # the value of (split, metric) at the model's last evaluation
    "selected",  # test accuracy at the evaluation of best validation accuracy (early stopping on validation)
    "auc",  # mean validation accuracy over log-steps (study.measures.val_auc)
    "steps",  # optimizer steps until validation accuracy first reaches the condition's ``target``-th target
    "peak",  # the largest value of (split, metric) after step 0
    "saturation",  # from examples.parquet: share of wrong test examples whose logit gradient vanished
    "derived",  # computed from other quantities or metrics (its ``source`` names the main one)
)
# How a margin is read (``Quantity.margin_kind``).
ABSOLUTE = "absolute"  # the paired difference must lie within ±margin, in the quantity's own units
RELATIVE = "relative"  # the paired ratio must lie within [1/(1+margin), 1+margin]: tested on log values
# The questions of the study; each has exactly one primary quantity (``Quantity.question``).
QUESTIONS = {
    "speed": "speed: steps to the first validation-accuracy target",
    "gradient": "gradient magnitude: share of wrong test examples whose logit gradient vanished",
    "confident_wrong": "confident-wrong penalty: expected calibration error after temperature scaling (every loss "
                       "can enter it)",
}
# The report's groups of quantities (``Quantity.group``).
GROUPS = ("accuracy", "speed", "calibration", "gradient", "label_noise", "heldout", "features")
# The report's tables (and figure) whose columns (panels) are quantities (``Column.table``).
TABLES = (
    "headline",  # the headline table: per condition, each loss's estimate and its paired difference to the reference
    "headline_figure",  # the headline figure: one panel per column, the header its axis label
    "calibration",  # the calibration section's table
    "confident_wrong",  # the confident-wrong rates and loss shares
    "label_noise",  # per condition with noisy training labels
    "heldout",  # per condition with held-out classes
    "label_noise_figure",  # the label-noise figure: one panel per column of the shares over steps, the header its title
    "penalty_figure",  # the confident-wrong answer's figure: one panel per column, the header its title
)


@dataclass(frozen=True)
class Column:
    """Where a quantity is shown in one of the report's ``TABLES``: its place among that table's columns (sorted by
    it), its header, and, for a table of estimates, whether it is printed as a percentage (None: as it is declared)."""

    table: str
    place: int
    header: str
    percent: bool | None = None

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"column {self.header!r}: table {self.table!r} is not one of {TABLES}")


@dataclass(frozen=True)
class Quantity:
    """One per-seed quantity: where it is read from, which way is better, how it is printed, and the margin within
    which two losses count as equivalent (two one-sided tests, study.analysis)."""

    name: str
    label: str  # how tables and figures name it
    source: tuple[str, str]  # (split, metric) of the history table it is read from
    higher_is_better: bool | None  # None: neither direction is better (a temperature, a share of the loss)
    margin: float  # equivalence margin: ±margin (ABSOLUTE) or a ratio within 1 ± margin (RELATIVE)
    margin_kind: str = ABSOLUTE
    unit: str = ""  # "steps", "nats", or "" for a plain number or share
    digits: int = 3  # decimals when printed as a number (shares printed as percentages use digits - 2)
    percent: bool = False  # printed as a percentage
    reading: str = "last"  # one of READINGS
    group: str = "accuracy"  # one of GROUPS
    headline: bool = False  # in the headline's per-seed table and its paired comparisons (study.analysis.headline)
    question: str = ""  # the key of QUESTIONS this quantity answers as the primary comparison, else ""
    target: int = 0  # for reading == "steps": which target (1-based)
    columns: tuple[Column, ...] = ()  # where the report's tables show it
    compared: bool = True  # False: only shown, never compared between losses (its margin is not stated)
    own_probabilities: bool = False  # read on the probabilities the loss is trained to output (none: not applicable)

    def __post_init__(self) -> None:
        if self.reading not in READINGS:
            raise ValueError(f"quantity {self.name!r}: reading {self.reading!r} is not one of {READINGS}")
        if self.margin_kind not in (ABSOLUTE, RELATIVE):
            raise ValueError(f"quantity {self.name!r}: margin_kind {self.margin_kind!r} is not {ABSOLUTE!r} or "
                             f"{RELATIVE!r}")
        if self.group not in GROUPS:
            raise ValueError(f"quantity {self.name!r}: group {self.group!r} is not one of {GROUPS}")
        if self.question and self.question not in QUESTIONS:
            raise ValueError(f"quantity {self.name!r}: question {self.question!r} is not one of {tuple(QUESTIONS)}")
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"quantity {self.name!r}: margin must be a positive number, got {self.margin!r}")
        if (self.reading == "steps") != (self.target > 0):
            raise ValueError(f"quantity {self.name!r}: a 'steps' reading needs its target (1-based), and only it")
        if not self.compared and (self.headline or self.question):
            raise ValueError(f"quantity {self.name!r}: a headline or primary quantity is compared (compared=True)")
        tables = [c.table for c in self.columns]
        if not self.headline and {"headline", "headline_figure"} & set(tables):
            raise ValueError(f"quantity {self.name!r}: the headline table and figure show headline quantities only")
        if len(tables) != len(set(tables)):
            raise ValueError(f"quantity {self.name!r}: one column per table, got {tables}")

    def text(self, value: float) -> str:
        """``value`` as the report prints it: a percentage with ``digits - 2`` decimals, else ``digits`` decimals."""
        return f"{value:.{self.digits - 2}%}" if self.percent else f"{value:.{self.digits}f}"

    @property
    def primary(self) -> bool:
        return bool(self.question)

    @property
    def log_scale(self) -> bool:
        """Compared as log values (a ratio), so that a RELATIVE margin is a fixed distance: ±log(1 + margin)."""
        return self.margin_kind == RELATIVE

    @property
    def test_margin(self) -> float:
        """The margin on the scale the tests use: log(1 + margin) for RELATIVE, the margin itself otherwise."""
        return math.log1p(self.margin) if self.log_scale else self.margin


def steps_name(i: int) -> str:
    """Name of the per-seed quantity 'steps to the i-th target' (1-based)."""
    return f"steps_to_target_{i}"


_SHARE = {"digits": 3, "percent": True, "margin": 0.005}  # shares: ±0.5 percentage points
_ECE = {"higher_is_better": False, "margin": 0.01, "group": "calibration"}  # ECE: ±0.01 (one point)
_SPEED = {"higher_is_better": False, "margin": 0.10, "margin_kind": RELATIVE, "unit": "steps", "digits": 0,
          "reading": "steps", "group": "speed"}  # steps: ±10% of the reference, as a ratio

QUANTITIES: tuple[Quantity, ...] = (
    Quantity(steps_name(1), "steps to the first target", ("val", "accuracy"), **_SPEED, target=1, question="speed"),
    Quantity(steps_name(2), "steps to the second target", ("val", "accuracy"), **_SPEED, target=2),
    Quantity("val_auc", "validation accuracy over log-steps", ("val", "accuracy"), True, 0.005, reading="auc",
             group="speed"),
    Quantity("final_accuracy", "final test accuracy", ("test", "accuracy"), True, 0.005, headline=True,
             columns=(Column("headline", 1, "final test acc"), Column("headline_figure", 1, "test accuracy (fraction)"),
                      Column("label_noise", 2, "final test acc"))),
    Quantity("selected_accuracy", "validation-selected test accuracy", ("test", "accuracy"), True, 0.005,
             reading="selected", headline=True,
             columns=(Column("headline", 2, "val-selected test acc"),
                      Column("label_noise", 1, "val-selected test acc"))),
    Quantity("test_nll", "test NLL", ("test", "nll"), False, 0.02, unit="nats", headline=True,
             columns=(Column("headline", 3, "test NLL"), Column("headline_figure", 2, "test NLL (nats, log scale)"),
                      Column("calibration", 6, "test NLL"))),
    Quantity("ece", "ECE (softmax)", ("test", "ece"), **_ECE, headline=True,
             columns=(Column("headline", 4, "ECE"), Column("headline_figure", 3, "ECE (expected calibration error)"),
                      Column("calibration", 5, "ECE (softmax)"))),
    Quantity("ece_ts", "ECE after temperature scaling", ("test", "ece_ts"), **_ECE, question="confident_wrong",
             headline=True, columns=(Column("calibration", 1, "ECE after TS"),)),
    Quantity("ece_own", "ECE on the loss's own probabilities", ("test", "ece_own"), **_ECE, headline=True,
             own_probabilities=True, columns=(Column("calibration", 3, "ECE (own probabilities)"),)),
    Quantity("nll_ts", "test NLL after temperature scaling", ("test", "nll_ts"), False, 0.02, unit="nats",
             group="calibration", columns=(Column("calibration", 7, "NLL after TS"),)),
    Quantity("temperature", "fitted temperature", ("val", "temperature"), None, 0.1, digits=2, group="calibration",
             columns=(Column("calibration", 2, "temperature"),)),
    Quantity("brier", "Brier score", ("test", "brier"), False, 0.01, group="calibration",
             columns=(Column("calibration", 8, "Brier"),)),
    Quantity("confidence", "mean confidence", ("test", "confidence"), None, 0.01, group="calibration"),
    Quantity("confident_wrong_rate", "confidently wrong share of test examples", ("test", "confident_wrong_rate"),
             False, **_SHARE, group="calibration", columns=(Column("confident_wrong", 1, "confident-wrong rate"),)),
    Quantity("confident_wrong_loss_share", "share of the test loss carried by confidently wrong examples",
             ("test", "confident_wrong_loss_share"), None, **_SHARE, group="calibration",
             columns=(Column("confident_wrong", 2, "share of own test loss"),
                      Column("penalty_figure", 3, "share of the test loss carried\nby confident mistakes (own loss)"))),
    Quantity("confident_wrong_nll_share", "share of the test NLL carried by confidently wrong examples",
             ("test", "confident_wrong_nll_share"), None, **_SHARE, group="calibration",
             columns=(Column("confident_wrong", 3, "share of test NLL"),)),
    Quantity("saturated_share", "wrong test examples with a vanished logit gradient", ("test", "logit_grad_norm"),
             False, **_SHARE, reading="saturation", group="gradient", question="gradient"),
    Quantity("confident_wrong_corrected", "confidently wrong training examples corrected by the next evaluation",
             ("train_subset", "confident_wrong_corrected"), True, **_SHARE, reading="derived", group="gradient",
             columns=(Column("penalty_figure", 1, "confidently wrong training examples\ncorrected by the next "
                                                  "evaluation"),)),
    Quantity("memorised", "flipped training labels memorised", ("train_flipped", "memorised"), False, **_SHARE,
             group="label_noise",
             columns=(Column("label_noise", 4, "memorised"),
                      Column("label_noise_figure", 1, "memorised: predicted as the noisy label"),
                      Column("penalty_figure", 2, "flipped labels memorised\n(label noise, last evaluation)"))),
    Quantity("memorised_peak", "flipped training labels memorised at the peak", ("train_flipped", "memorised"),
             False, **_SHARE, reading="peak", group="label_noise",
             columns=(Column("label_noise", 5, "memorised (peak)"),)),
    Quantity("recovered", "flipped training labels recovered", ("train_flipped", "recovered"), True, **_SHARE,
             group="label_noise", columns=(Column("label_noise", 6, "recovered"),
                                           Column("label_noise_figure", 2, "recovered: predicted as the true label"))),
    Quantity("clean_train_accuracy", "accuracy on the clean training labels", ("train_clean", "accuracy"), True,
             0.005, group="label_noise", columns=(Column("label_noise", 7, "clean train acc", percent=True),)),
    Quantity("accuracy_drop", "accuracy lost after the validation-selected best", ("test", "accuracy"), False, 0.005,
             reading="derived", group="label_noise", columns=(Column("label_noise", 3, "drop"),)),
    Quantity("auroc_max_softmax", "AUROC held-out vs known classes, max softmax", ("heldout", "auroc_max_softmax"),
             True, 0.01, group="heldout", columns=(Column("heldout", 1, "AUROC by max softmax"),)),
    Quantity("auroc_max_sigmoid", "AUROC held-out vs known classes, max sigmoid", ("heldout", "auroc_max_sigmoid"),
             True, 0.01, group="heldout", columns=(Column("heldout", 2, "AUROC by max sigmoid"),)),
    Quantity("auroc_natural", "AUROC held-out vs known classes, the loss's own score", ("heldout", "auroc_natural"),
             True, 0.01, reading="derived", group="heldout"),
    Quantity("none_share_heldout", "held-out images answered 'none'", ("heldout", "none_share"), None, **_SHARE,
             group="heldout", columns=(Column("heldout", 3, "'none' on held-out classes"),)),
    Quantity("none_share_test", "known-class test images answered 'none'", ("test", "none_share"), None, **_SHARE,
             group="heldout", columns=(Column("heldout", 4, "'none' on trained classes"),)),
    # What a loss leaves in the penultimate layer (study.features): Kornblith et al. 2021's class separation, and a
    # linear probe's accuracy on frozen features (fitted on every class, the held-out ones included). Neither
    # direction of the separation is better: it goes with in-task accuracy and, by Kornblith et al., against transfer.
    Quantity("class_separation", "class separation R² of the penultimate features (test)",
             ("test", "class_separation"), None, 0.02, group="features", headline=True),
    Quantity("class_separation_train", "class separation R² of the penultimate features (training subset)",
             ("train_subset", "class_separation"), None, 0.02, group="features", headline=True),
    Quantity("transfer_heldout", "linear-probe accuracy on the classes never trained on",
             ("transfer", "heldout_accuracy"), True, 0.01, **{k: v for k, v in _SHARE.items() if k != "margin"},
             group="features", headline=True),
    Quantity("transfer_accuracy", "linear-probe accuracy on every class", ("transfer", "accuracy"), True, 0.005,
             group="features", headline=True),
    # Shown beside the other ECEs in the calibration table, not compared between losses.
    Quantity("classwise_ece", "classwise ECE of the softmax", ("test", "classwise_ece"), False, 0.01,
             group="calibration", compared=False, columns=(Column("calibration", 4, "classwise ECE"),)),
)


def _index() -> dict[str, Quantity]:
    index: dict[str, Quantity] = {}
    for q in QUANTITIES:
        if q.name in index:
            raise ValueError(f"quantity {q.name!r} is declared twice")
        index[q.name] = q
    return index


_BY_NAME = _index()


@contextmanager
def registered(*added: Quantity) -> Iterator[tuple[Quantity, ...]]:
    """Declare ``added`` after the registry's quantities for the duration of a ``with`` block (tests), then restore
    the registry. Read at call time, as every function here is; the primary quantities (``study.analysis.PRIMARY``)
    are read once at import, so a quantity registered here cannot answer a question."""
    global QUANTITIES, _BY_NAME
    if any(q.question for q in added):
        raise ValueError("a quantity registered at run time cannot answer a question: declare it in QUANTITIES")
    shipped = QUANTITIES
    try:
        QUANTITIES = (*shipped, *added)
        _BY_NAME = _index()
        yield added
    finally:
        QUANTITIES = shipped
        _BY_NAME = _index()


def get(name: str) -> Quantity | None:
    """The declaration of ``name``, or None for a quantity the registry does not declare. Steps to a target beyond
    the declared ones (a condition with more targets) are declared like the second."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    found = re.fullmatch(r"steps_to_target_([1-9][0-9]*)", name)
    if found:
        return dataclasses.replace(_BY_NAME[steps_name(2)], name=name, label=f"steps to target {found[1]}",
                                   target=int(found[1]), question="")
    return None


def spec(name: str) -> Quantity:
    """The declaration of ``name`` (as ``get``); a KeyError that lists the declared names otherwise."""
    found = get(name)
    if found is None:
        raise KeyError(f"unknown quantity {name!r}; declared: {', '.join(_BY_NAME)}")
    return found


def names(group: str | None = None) -> tuple[str, ...]:
    """Declared quantities in the registry's order, all or those of ``group``."""
    return tuple(q.name for q in QUANTITIES if group is None or q.group == group)


def primary() -> dict[str, str]:
    """{quantity: the question it answers} for the primary quantities, one per question, in QUESTIONS' order."""
    found = {q.question: q.name for q in QUANTITIES if q.question}
    return {found[question]: text for question, text in QUESTIONS.items() if question in found}


def read_last(group: str | None = None) -> dict[str, tuple[str, str]]:
    """{quantity: (split, metric)} of the quantities read at the last evaluation, all or those of ``group``."""
    return {q.name: q.source for q in QUANTITIES if q.reading == "last" and (group is None or q.group == group)}


def headline() -> tuple[str, ...]:
    """The quantities compared in the headline's paired comparisons, in the registry's order."""
    return tuple(q.name for q in QUANTITIES if q.headline)


def table(name: str) -> tuple[tuple[Quantity, Column], ...]:
    """The quantities of the report's table (or figure) ``name`` (one of TABLES) with their columns, in the
    columns' order (ties in the registry's)."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; declared: {', '.join(TABLES)}")
    shown = [(q, c) for q in QUANTITIES for c in q.columns if c.table == name]
    return tuple(sorted(shown, key=lambda pair: pair[1].place))


def shown_percent(quantity: Quantity, column: Column) -> bool:
    """Whether ``column`` prints ``quantity`` as a percentage."""
    return quantity.percent if column.percent is None else column.percent


def is_steps(name: str) -> bool:
    """Whether ``name`` is a steps-to-target quantity (right-censored: NaN means never reached)."""
    found = get(name)
    return found is not None and found.reading == "steps"


def steps_names(count: int) -> tuple[str, ...]:
    """The steps quantities of a condition with ``count`` targets."""
    return tuple(steps_name(i) for i in range(1, count + 1))


def read_as(split: str, metric: str, reading: str = "last") -> str:
    """The declared quantity read from (``split``, ``metric``) by ``reading``; a KeyError when none is."""
    found = [q.name for q in QUANTITIES if q.source == (split, metric) and q.reading == reading]
    if not found:
        raise KeyError(f"no quantity is read from ({split!r}, {metric!r}) by {reading!r}")
    return found[0]


def derived(group: str) -> tuple[str, ...]:
    """The quantities of ``group`` computed from other quantities (reading "derived"), in the registry's order."""
    return tuple(q.name for q in QUANTITIES if q.group == group and q.reading == "derived")


def max_probability_auroc(probabilities: str) -> str | None:
    """The held-out-class AUROC scored by the maximum of ``probabilities`` ("softmax", "sigmoid": a loss's
    ``LossSpec.probabilities``), None where no such quantity is declared (a loss that models no probability)."""
    return next((q.name for q in QUANTITIES if q.group == "heldout" and q.reading == "last"
                 and q.source[1] == f"auroc_max_{probabilities}"), None)
