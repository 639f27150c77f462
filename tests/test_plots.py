"""The evaluation's plots: per-class recall with Wilson intervals and a visible mark at zero, every question type's
metrics, a row-normalised confusion matrix with a colour bar; and the training curves' legend off the data."""

from __future__ import annotations

import pytest

from dermvlm.evaluation.plots import plots, wilson

TYPES = {
    "mcq": {"n": 8, "accuracy": 0.5, "balanced_accuracy": 0.4, "macro_f1": 0.3,
            "ci95": {"accuracy": [0.2, 0.8], "balanced_accuracy": [0.1, 0.7], "macro_f1": [0.1, 0.5]},
            "per_class": {"melanoma": {"precision": 0.5, "recall": 1.0, "f1": 0.67, "support": 4},
                          "nevus": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 4}},
            "confusion": {"labels": ["melanoma", "nevus"], "columns": ["melanoma", "nevus", "(other)"],
                          "matrix": [[4, 0, 0], [3, 0, 1]]},
            "fairness": {"tone": {"min_n": 3, "worst_group": {"group": "tan"},
                                  "groups": {"light": {"n": 5, "accuracy": 0.6, "balanced_accuracy": 0.5},
                                             "tan": {"n": 3, "accuracy": 0.3, "balanced_accuracy": 0.33}}}}},
    "open": {"n": 8, "accuracy": 0.25, "per_class": {"melanoma": {"recall": 0.5, "support": 4, "precision": 1,
                                                                   "f1": 0.6}}},
}


def test_wilson_interval_matches_the_formula():
    assert wilson(0, 5) == pytest.approx((0.0, 0.4345), abs=1e-3)
    assert wilson(5, 5) == pytest.approx((0.5655, 1.0), abs=1e-3)


def test_every_plot_is_written_and_zero_recall_is_marked(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, *a, **k: drawn.append(a) or original(self, *a, **k))
    made = plots({"metrics": {"types": TYPES, "primary": "mcq"}}, tmp_path)
    assert sorted(p.name for p in made) == ["confusion_matrix.png", "fairness.png", "per_class.png", "summary.png"]
    assert ([0], [1]) in [tuple(map(list, a[:2])) for a in drawn]  # nevus (row 1) has a zero-recall mark
    assert all(p.stat().st_size > 5000 for p in made)
