"""Speed of kerasmlic.metrics on a COCO-val-size score matrix (40,137 x 80).

Baseline: scikit-learn computing the same figures (a per-class loop of
``average_precision_score``, ``precision_recall_fscore_support`` with
average=None/macro/micro/samples on the thresholded and top-3 sets; top-3 sets
by a stable argsort). Both run in this process on the same synthetic data
(about 2.9 labels per image, as COCO), best of ``--repeat`` runs. The script
also checks that both give the same figures.

Usage: python benchmarks/metrics_speed.py [--images N] [--classes C] [--repeat R]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_fscore_support  # noqa: E402

from kerasmlic.metrics import (  # noqa: E402
    average_precision_per_class,
    calibrate_thresholds,
    evaluate_predictions,
    top_k_predictions,
)


def make_data(n, c, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < 2.9 / c
    logits = rng.normal(-2.0 + 3.0 * y, 1.5)
    # float32 sigmoid outputs rounded to 4 decimals: realistic ties.
    scores = np.round(1.0 / (1.0 + np.exp(-logits)), 4).astype(np.float32)
    return y.astype(np.int64), scores


def sklearn_top_k(scores, k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.zeros(scores.shape, dtype=np.int64)
    np.put_along_axis(out, order, 1, axis=1)
    return out


def sklearn_evaluate(y, scores):
    aps = [
        average_precision_score(y[:, c], scores[:, c]) for c in range(y.shape[1]) if y[:, c].any()
    ]
    res = {"mAP": float(np.mean(aps))}
    for suffix, pred in (
        ("", (scores >= 0.5).astype(np.int64)),
        ("_top3", sklearn_top_k(scores, 3)),
    ):
        precision_recall_fscore_support(y, pred, average=None, zero_division=0)
        cp, cr, _, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
        op, orr, of1, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
        res.update({f"CP{suffix}": cp, f"CR{suffix}": cr, f"OP{suffix}": op, f"OR{suffix}": orr})
        res[f"OF1{suffix}"] = of1
        if not suffix:
            ep, er, ef1, _ = precision_recall_fscore_support(
                y, pred, average="samples", zero_division=0
            )
            res.update({"EP": ep, "ER": er, "EF1": ef1})
    return res


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40137)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    y, scores = make_data(args.images, args.classes)
    print(f"score matrix {args.images} x {args.classes}, best of {args.repeat}")

    rows = []
    t_base, base = best_time(lambda: sklearn_evaluate(y, scores), args.repeat)
    t_ours, ours = best_time(lambda: evaluate_predictions(y, scores), args.repeat)
    rows.append(("evaluate_predictions (all figures)", "sklearn figures", t_ours, t_base))
    diff = max(abs(ours[k] - base[k]) for k in base)

    t_base_ap, _ = best_time(
        lambda: [average_precision_score(y[:, c], scores[:, c]) for c in range(y.shape[1])],
        args.repeat,
    )
    t_ap, _ = best_time(lambda: average_precision_per_class(y, scores), args.repeat)
    rows.append(("average_precision_per_class", "average_precision_score loop", t_ap, t_base_ap))
    t_base_k, _ = best_time(lambda: sklearn_top_k(scores, 3), args.repeat)
    t_k, _ = best_time(lambda: top_k_predictions(scores, 3), args.repeat)
    rows.append(("top_k_predictions(k=3)", "stable argsort", t_k, t_base_k))
    t_cal, _ = best_time(lambda: calibrate_thresholds(y, scores), args.repeat)
    rows.append(("calibrate_thresholds", "-", t_cal, float("nan")))

    print(f"{'kerasmlic':36s}  {'baseline':30s}  {'ours s':>7s}  {'base s':>7s}  {'speed-up':>8s}")
    for name, baseline, ours_s, base_s in rows:
        ratio = base_s / ours_s
        base_text = f"{base_s:7.3f}" if base_s == base_s else f"{'-':>7s}"
        ratio_text = f"{ratio:7.2f}x" if ratio == ratio else f"{'-':>8s}"
        print(f"{name:36s}  {baseline:30s}  {ours_s:7.3f}  {base_text}  {ratio_text}")
    print(f"max |difference| of shared figures vs sklearn: {diff:.2e}")
    print(f"mAP {ours['mAP']:.4f}  OF1 {ours['OF1']:.4f}  OF1_top3 {ours['OF1_top3']:.4f}")
    verdict = "under" if t_ours < 2.0 else "OVER"
    print(f"evaluate_predictions: {t_ours:.3f} s ({verdict} the 2 s target)")


if __name__ == "__main__":
    main()
