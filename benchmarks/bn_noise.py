"""How much of a finished run's val mAP is BatchNorm noise?

A model is evaluated with the moving mean and variance of its BatchNormalization
layers: an exponential average over the last training batches, ``momentum`` per
step (about 1 / (1 - momentum) batches: 10 at the built-in CNNs' 0.9, 100 at
0.99). When those rest on few batches, the evaluated score moves from one epoch
to the next even where the weights hardly do, and a run can fail the 0.5-point
convergence rule (``experiments/README.md``) on that noise alone.

For each finished run this reloads the last weights (``checkpoints/last.weights.h5``)
and, with the weights fixed, re-estimates only the BatchNorm statistics from
fresh training batches (the run's own training stream, augmentation included),
scoring val mAP each time:

- ``short``: ``--sets`` sets of ``--batches`` batches each at the momentum the
  run trained with (what the end of one more epoch could have left);
- ``long``: ``--sets`` sets of ``--long-batches`` batches at ``--long-momentum``.

The table gives each row's spread (max - min) and the ratio of the short
spread to the long one (the baseline).

Usage:
    python benchmarks/bn_noise.py RUN [RUN ...] [--data DIR] [--sets 6]
        [--batches 10] [--long-batches 120] [--long-momentum 0.99]

Example (a run of the built-in study, ``make study``):
    python benchmarks/bn_noise.py runs/study/rnn_hidden/seed-2 --data data/study-shards
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from kerasmlic.metrics import evaluate_predictions  # noqa: E402
from kerasmlic.models.encoders import batchnorm_layers, get_encoder  # noqa: E402
from kerasmlic.training import builder, setup  # noqa: E402
from kerasmlic.training.config import load_config  # noqa: E402


def val_map(predict, model):
    """Val mAP in points, computed as the training callback does (``history.csv``).

    Args:
        predict: ``setup.val_predictor``'s function.
        model: The model to score.

    Returns:
        A float.
    """
    y_true, scores, predicted = predict(model)
    return 100.0 * evaluate_predictions(y_true, scores, predicted)["mAP"]


def measure(run_dir, data_dir, sets, batches, long_batches, long_momentum):
    """Score one run as trained and after re-estimated BatchNorm statistics.

    Args:
        run_dir: A finished ``kerasmlic train`` run folder.
        data_dir: Shard folder (None: the one in the run's config).
        sets: Re-estimates per row.
        batches: Batches per short re-estimate.
        long_batches: Batches per long re-estimate.
        long_momentum: Momentum of the long re-estimates.

    Returns:
        A dict: ``as_trained``, ``momentum``, ``short`` and ``long`` (lists of mAPs).
    """
    overrides = [f"data.dir={data_dir}"] if data_dir else []
    config = load_config(os.path.join(run_dir, "config.yaml"), overrides)
    data = builder.check_data(config)
    model = setup.build_model(config, len(data[1]["classes"]))
    model.load_weights(os.path.join(run_dir, "checkpoints", "last.weights.h5"))
    training = setup.prepare_training(config, model, data)
    predict = setup.val_predictor(config, data[0])
    encoder = get_encoder(model)
    norms = batchnorm_layers(encoder)
    trained = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in norms]
    momentum = norms[0].momentum
    stream = iter(training.train_ds)

    def reestimate(steps, step_momentum):
        # Every set starts from the trained statistics, as the next epoch would.
        for layer, (mean, variance) in zip(norms, trained, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
            layer.momentum = step_momentum
        for _ in range(steps):
            images, _ = next(stream)
            encoder(images, training=True)
        return val_map(predict, model)

    result = {"as_trained": val_map(predict, model), "momentum": momentum}
    result["short"] = [reestimate(batches, momentum) for _ in range(sets)]
    result["long"] = [reestimate(long_batches, long_momentum) for _ in range(sets)]
    return result


def main():
    """Print the table for the runs on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--data", default=None, help="shard folder (default: the run's)")
    parser.add_argument("--sets", type=int, default=6)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--long-batches", type=int, default=120)
    parser.add_argument("--long-momentum", type=float, default=0.99)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(
        f"| run | trained momentum | val mAP as trained | {args.batches} batches at it "
        f"(min-max) | spread | {args.long_batches} at {args.long_momentum:g} (min-max) "
        "| spread | short / long |"
    )
    print("|---|---:|---:|---|---:|---|---:|---:|")
    for run_dir in args.runs:
        r = measure(
            run_dir, args.data, args.sets, args.batches, args.long_batches, args.long_momentum
        )
        short = max(r["short"]) - min(r["short"])
        long = max(r["long"]) - min(r["long"])
        ratio = f"{short / long:.1f}" if long > 0 else "-"
        print(
            f"| {run_dir} | {r['momentum']:g} | {r['as_trained']:.2f} "
            f"| {min(r['short']):.2f}-{max(r['short']):.2f} | {short:.2f} "
            f"| {min(r['long']):.2f}-{max(r['long']):.2f} | {long:.2f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
