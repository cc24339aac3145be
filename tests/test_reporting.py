"""The study report's pure parts: tables, statistics and the gain analysis, hand-worked."""

import math

import numpy as np
import pytest

from kerasmlic.reporting import analysis


def test_cooccurrence_strength_and_size_hand_worked():
    info = {
        "label_counts": [2, 1, 0],
        "cooccurrence": [[2, 1, 0], [1, 1, 0], [0, 0, 0]],
        "label_mean_area": [0.5, 0.01, 0.0],
    }
    strength = analysis.cooccurrence_strength(info)
    assert strength[0] == pytest.approx(0.5) and strength[1] == pytest.approx(1.0)
    assert np.isnan(strength[2])
    size = analysis.object_size(info)
    assert size[:2].tolist() == [0.5, 0.01] and np.isnan(size[2])


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 2.0 * x + rng.normal(size=40)
    x[3] = x[7]  # a tie
    assert analysis.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert analysis.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    rho, p = analysis.permutation_p_value(x, y, permutations=500)
    assert rho == pytest.approx(stats.spearmanr(x, y)[0]) and p < 0.01
    _, p_null = analysis.permutation_p_value(x, rng.normal(size=40), permutations=500)
    assert p_null > 0.01


def test_gain_analysis_finds_a_planted_relation():
    c = 30
    rng = np.random.default_rng(1)
    counts = rng.integers(5, 50, c)
    cooc = np.diag(counts).astype(float)
    others = rng.uniform(0.2, 3.0, c)  # mean other labels per image
    cooc[np.arange(c), (np.arange(c) + 1) % c] = others * counts
    info = {
        "label_counts": counts.tolist(),
        "cooccurrence": cooc.tolist(),
        "label_mean_area": rng.uniform(0.001, 0.3, c).tolist(),
    }
    base = rng.uniform(0.2, 0.6, c)
    gain = 0.05 * others  # the planted effect: more co-occurrence, more gain

    def results(ap):
        return {"per_class": [{"AP": float(a)} for a in ap]}

    out = analysis.gain_analysis(results(base + gain), results(base), info, permutations=300)
    assert out["num_classes"] == c and out["classes_improved"] == c
    assert out["cooccurrence_stats"]["rho"] == pytest.approx(1.0)
    assert out["cooccurrence_stats"]["p"] < 0.01
    assert abs(out["size_stats"]["rho"]) < 0.5


def test_seed_mean_runs_pick_the_best_model_on_the_mean_hand_worked():
    """The analysis's best sequence model is the one with the best mean, not the best seed 0."""
    from kerasmlic.reporting.runs import best_sequence_run, seed_mean_runs
    from kerasmlic.reporting.stats import mean_std

    def run(name, f1, aps):
        return {"name": name, "eval": {"OF1_top3": f1, "mAP": 0.3, "per_class": aps}}

    def rows(*aps):
        return [{"AP": ap} for ap in aps]

    groups = {
        "bce": [run("bce", 0.5, rows(0.1, None, 0.5)), run("bce", 0.5, rows(0.3, None, 0.5))],
        # seq2seq wins seed 0 (0.60 against 0.55) but its mean is 0.50.
        "seq2seq": [
            run("seq2seq", 0.60, rows(0.9, None, 0.9)),
            run("seq2seq", 0.40, rows(0, None, 0)),
        ],
        "rnn_hidden": [
            run("rnn_hidden", 0.55, rows(0.2, None, 0.6)),
            run("rnn_hidden", 0.55, rows(0.4, None, 0.8)),
        ],
    }
    assert best_sequence_run([runs[0] for runs in groups.values()])["name"] == "seq2seq"
    summary = {
        name: {key: mean_std([r["eval"][key] for r in runs]) for key in ("OF1_top3", "mAP")}
        for name, runs in groups.items()
    }
    means = seed_mean_runs(groups, summary)
    assert [m["name"] for m in means] == ["bce", "seq2seq", "rnn_hidden"]
    best = best_sequence_run(means)
    assert best["name"] == "rnn_hidden"
    assert best["eval"]["OF1_top3"] == pytest.approx(0.55)
    assert [row["AP"] for row in best["eval"]["per_class"]] == [
        pytest.approx(0.3),
        None,
        pytest.approx(0.7),
    ]


def test_paired_comparison_hand_worked_and_math_fallback(monkeypatch):
    import builtins

    from kerasmlic.reporting.stats import mean_std, paired_comparison, t_two_sided_p

    assert mean_std([1.0, 3.0, None, float("nan")]) == (2.0, pytest.approx(2**0.5), 2)
    # Differences 0.1, 0.2, 0.3: mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3) = 2 sqrt 3.
    out = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert out["mean_diff"] == pytest.approx(0.2) and out["std_diff"] == pytest.approx(0.1)
    assert out["t"] == pytest.approx(2 * 3**0.5) and out["method"] == "scipy"
    # t = 2 sqrt 3 with 2 df: p = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14).
    assert out["p"] == pytest.approx(1 - (12 / 14) ** 0.5, rel=1e-9)
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    fallback = paired_comparison([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert fallback["method"] == "math" and fallback["p"] == pytest.approx(out["p"], rel=1e-9)
    monkeypatch.undo()
    from scipy import stats

    for t, df in ((0.3, 1), (2.5, 3), (-4.0, 7), (12.0, 30)):
        assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-8)
    single = paired_comparison([0.6], [0.5])
    assert single["n"] == 1 and np.isnan(single["p"])


def test_last_epochs_spread_marks_converged_runs_hand_worked():
    from kerasmlic.reporting.runs import last_epochs_spread
    from kerasmlic.reporting.tables import seed_table

    assert last_epochs_spread({"val_mAP": [0.1, 0.70, 0.71, 0.704]}) == pytest.approx(0.01)
    assert math.isnan(last_epochs_spread({"val_mAP": [0.7, 0.71]}))

    def run(curve):
        return {
            "eval": {k: 0.5 for k in ("OP_top3", "OR_top3", "OF1_top3", "mAP", "CF1", "OF1")},
            "history": {"epoch": list(range(len(curve))), "val_mAP": curve},
            "config": {"train": {"learning_rate": 1e-3}},
            "summary": {},
        }

    # Worst seed: 0.004 (converged) for bce; 0.006 for warp (not converged).
    table = seed_table(
        {
            "bce": [run([0.2, 0.600, 0.603, 0.604]), run([0.3, 0.6, 0.6, 0.6])],
            "warp": [run([0.2, 0.500, 0.506, 0.503]), run([0.3, 0.5, 0.5, 0.5])],
        }
    )
    rows = {
        name: line for line in table.splitlines() for name in ("bce", "warp") if f"`{name}`" in line
    }
    assert "| 0.40 ✓ |" in rows["bce"] and "| 0.60 ✗ |" in rows["warp"]


def test_results_table_puts_runs_in_the_study_order_with_hand_worked_cells():
    from kerasmlic.reporting.tables import results_table

    def run(name, f1, seconds):
        metrics = {"OP_top3": 0.5, "OR_top3": 0.25, "OF1_top3": f1, "mAP": 0.4236}
        return {
            "name": name,
            "eval": {**metrics, "CF1": None, "OF1": float("nan")},
            "history": {"epoch": [0, 1, 2], "epoch_seconds": [30.0, seconds, float("nan")]},
            "summary": {},
        }

    table = results_table([run("label_query", 0.6, 60.0), run("seq2seq", 1 / 3, 90.0)])
    header, rule, first, second = table.splitlines()
    assert header.startswith("| model | P | R | F1 | mAP | CF1 | OF1 | epochs | train min")
    # seq2seq is in the study's table, label_query is not: the study's models come first.
    assert first == (
        "| CNN seq2seq (`seq2seq`) | 50.0 | 25.0 | 33.3 | 42.4 | – | – | 3 | 2.0 "
        "| 68.9 / 65.6 / 67.2 |"
    )
    assert second.startswith("| label_query (`label_query`) | 50.0 | 25.0 | 60.0 |")
    assert second.endswith("| 3 | 1.5 | – |")
