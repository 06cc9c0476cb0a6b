"""study compare: a rerun's verdicts beside the committed ones, sorted into kept, softened, strengthened and
contradicted."""

import pandas as pd
import pytest

from study import analysis, cli, rerun

D, N, E, SAME = analysis.DIFFERENT, analysis.NOT_ESTABLISHED, analysis.EQUIVALENT, analysis.IDENTICAL


def _table(rows):
    return pd.DataFrame([{"condition": "c", "loss": loss, "quantity": "q", "diff": diff, "p_holm": 0.5,
                          "evidence": word} for loss, diff, word in rows])


def test_each_pair_of_verdicts_is_kept_softened_strengthened_or_contradicted():
    first = _table([("a", 1.0, D), ("b", 1.0, D), ("c", 1.0, D), ("d", 1.0, N), ("e", 0.1, E), ("f", 1.0, D),
                    ("g", 1.0, None), ("h", 0.0, E), ("i", 0.0, SAME), ("j", 0.2, N), ("k", 0.0, SAME)])
    second = _table([("a", 2.0, D), ("b", 1.0, N), ("c", 0.0, E), ("d", 0.1, E), ("e", -0.1, E), ("f", -1.0, D),
                     ("g", 1.0, D), ("h", 0.3, D), ("i", 0.01, E), ("j", 0.3, D), ("k", 0.0, N)])
    changes = rerun.verdict_changes(first, second).set_index("loss")["change"].to_dict()
    assert changes == {
        "a": rerun.KEPT,
        "b": rerun.SOFTENED,  # different, then not established
        "c": rerun.CONTRADICTED,  # different, then equivalent within the margin
        "d": rerun.STRENGTHENED,  # not established, then equivalent
        "e": rerun.KEPT,  # equivalent both times: the sign inside the margin means nothing
        "f": rerun.CONTRADICTED,  # 'different' both times, in opposite directions
        "h": rerun.CONTRADICTED,  # equivalent, then different
        "i": rerun.KEPT,  # identical, then equivalent: no difference both times
        "j": rerun.STRENGTHENED,  # not established, then different
        "k": rerun.SOFTENED,  # identical, then not established
    }  # g: untested once


def test_the_verdict_column_is_read_before_the_former_evidence_one():
    first = _table([("a", 1.0, N)]).assign(verdict=D)
    second = _table([("a", 1.0, N)]).assign(verdict=E)
    assert rerun.verdict_changes(first, second)["change"].tolist() == [rerun.CONTRADICTED]


def test_the_summary_counts_every_kind_of_change():
    first = _table([("a", 1.0, D), ("b", 1.0, N), ("c", 1.0, E), ("d", 1.0, D)])
    second = _table([("a", 1.0, D), ("b", 1.0, D), ("c", 1.0, N), ("d", 1.0, E)])
    comparison = rerun.RunComparison([], _Wording(), rerun.verdict_changes(first, second))
    text = comparison.summary()
    assert "4 tested in both runs; 1 kept, 1 softened" in text and "1 strengthened" in text
    assert "1 contradicted" in text and "contradicted: c d q" in text


class _Wording:
    def summary(self) -> str:
        return "findings: fabricated"


def test_compare_names_a_missing_report(tmp_path, capsys):
    (tmp_path / "a" / "conditions").mkdir(parents=True)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "report/report.md is missing" in capsys.readouterr().err


@pytest.mark.parametrize("word", analysis.EVIDENCE)
def test_a_verdict_kept_word_for_word_is_kept(word):
    table = _table([("a", 0.3, word)])
    assert rerun.verdict_changes(table, table)["change"].tolist() == [rerun.KEPT]
