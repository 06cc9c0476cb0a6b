"""study compare: a rerun's verdicts beside the committed ones, sorted into kept, softened and contradicted."""

import pandas as pd
import pytest

from study import analysis, cli, rerun

D, N, A = analysis.DIFFERENT, analysis.NOT_ESTABLISHED, analysis.ALIKE


def _table(rows):
    return pd.DataFrame([{"condition": "c", "loss": loss, "quantity": "q", "diff": diff, "p_holm": 0.5,
                          "evidence": word} for loss, diff, word in rows])


def test_each_pair_of_verdicts_is_kept_softened_or_contradicted():
    first = _table([("a", 1.0, D), ("b", 1.0, D), ("c", 1.0, D), ("d", 1.0, N), ("e", 0.1, A), ("f", 1.0, D),
                    ("g", 1.0, None)])
    second = _table([("a", 2.0, D), ("b", 1.0, N), ("c", 0.0, A), ("d", 0.1, A), ("e", -0.1, A), ("f", -1.0, D),
                     ("g", 1.0, D)])
    changes = rerun.verdict_changes(first, second).set_index("loss")["change"].to_dict()
    assert changes == {"a": rerun.KEPT, "b": rerun.SOFTENED, "c": rerun.CONTRADICTED, "d": rerun.SOFTENED,
                       "e": rerun.KEPT,  # no difference either way: the sign of a non-difference means nothing
                       "f": rerun.CONTRADICTED}  # 'different' both times, in opposite directions; g: untested once


def test_compare_names_a_missing_report(tmp_path, capsys):
    (tmp_path / "a" / "conditions").mkdir(parents=True)
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "report/report.md is missing" in capsys.readouterr().err


@pytest.mark.parametrize("word", analysis.EVIDENCE)
def test_a_verdict_kept_word_for_word_is_kept(word):
    table = _table([("a", 0.3, word)])
    assert rerun.verdict_changes(table, table)["change"].tolist() == [rerun.KEPT]
