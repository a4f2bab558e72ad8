"""experiments.demo: the results table and its failure modes (the full demo is `make demo`)."""

from __future__ import annotations

import pytest

from experiments.demo import DemoConfig, run
from experiments.reporting import results_table


def summary(mrr: float, new_mrr: float | None) -> dict:
    group = {"mrr": mrr, "recall@10": 2 * mrr, "ndcg@10": 1.5 * mrr, "count": 10}
    return {"overall": group, "active": group, "inactive": group,
            "new": {"mrr": new_mrr, "recall@10": None, "ndcg@10": None, "count": 0 if new_mrr is None else 3}}


def test_results_table_has_one_row_per_model_in_order():
    results = {"2ts": {"test": summary(0.1234, 0.05)}, "2ts-plus": {"test": summary(0.2, None)}}
    lines = results_table(results).splitlines()
    assert lines[0] == "| model | MRR | Recall@10 | NDCG@10 | MRR active | MRR inactive | MRR new |"
    assert lines[2] == "| 2ts | 0.1234 | 0.2468 | 0.1851 | 0.1234 | 0.1234 | 0.0500 |"
    assert lines[3] == "| 2ts-plus | 0.2000 | 0.4000 | 0.3000 | 0.2000 | 0.2000 | empty |"  # no new users


def test_unknown_model_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        run(DemoConfig(data=str(tmp_path), output=str(tmp_path / "out"), models=["3ts"]))
    assert not (tmp_path / "out").exists()
