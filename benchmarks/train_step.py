"""Training-step time of every registered model relative to ``bce``; greedy vs beam decoding.

One encoder and one batch for all (default: MobileNetV3Small at 224 px, batch
32, random weights, CPU). Models are timed round-robin (one step of each per
round) so a change in machine load affects every model alike; the figure is
the median over rounds.

Goals (issue "Model zoo"): ``seq2seq_attention`` train step <= 1.3x ``bce``;
beam-3 inference <= 1.6x greedy.

Decoding is timed at full length: with random weights beam search (summed
log probabilities) would pick the short, likely ``[END]`` and stop at once,
so the END logit is suppressed in both decoders (same weights) and every
sequence runs ``max_labels`` steps, the worst case for the beam.

Usage:
    python benchmarks/train_step.py [--encoder mobilenet_v3_small] [--image-size 224]
        [--batch-size 32] [--warmup 2] [--rounds 5] [--infer-rounds 15] [--threads 2]
        [--models bce,seq2seq_attention]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerasmlic.data import sequences  # noqa: E402
from kerasmlic.models.registry import build_model, get_model_class, model_names  # noqa: E402

NUM_CLASSES = 80
BASELINE = "bce"


def make_batch(batch_size, image_size, max_labels, seed=0):
    """Random images (0-255) and targets: ~3 labels per image, sequences in class order."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    multi_hot = np.zeros((batch_size, NUM_CLASSES), np.float32)
    seq = np.full((batch_size, max_labels + 2), sequences.PAD, np.int32)
    for i in range(batch_size):
        labels = np.sort(rng.choice(NUM_CLASSES, rng.integers(1, 6), replace=False))
        multi_hot[i, labels] = 1.0
        tokens = [sequences.START, *(labels[:max_labels] + sequences.NUM_SPECIAL), sequences.END]
        seq[i, : len(tokens)] = tokens
    return images, multi_hot, seq


def build(name, args, **options):
    """Build and compile a model on the benchmark encoder."""
    keras.utils.set_random_seed(0)
    model = build_model(
        name,
        num_classes=NUM_CLASSES,
        image_size=args.image_size,
        encoder=args.encoder,
        **options,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    return model


def round_robin(fns, warmup, rounds):
    """Time each callable ``rounds`` times, interleaved.

    Returns:
        ``{name: (median wall seconds, median process CPU seconds)}``. CPU time
        (all threads of this process) is the steadier figure on a shared
        machine: other processes' load stretches wall time, not this work.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def train_fn(model, images, multi_hot, seq):
    """Return a no-argument callable running one ``train_on_batch`` on the fixed batch.

    Args:
        model: A compiled kerasmlic model.
        images: The batch's images (NumPy).
        multi_hot: Its multi-hot labels.
        seq: Its label sequences (used when the model trains on sequences).
    """
    targets = {"multi_hot": multi_hot, "sequence": seq} if model.uses_sequences else multi_hot
    x = tf.constant(images)
    y = tf.nest.map_structure(tf.constant, targets)
    return lambda: model.train_on_batch(x, y)


def suppress_end(model, bias=-30.0):
    """Make END (almost) never chosen, so decoding runs its maximum length."""
    dense = model.get_layer("decoder").output_dense
    kernel, b = dense.get_weights()
    b[sequences.END] = bias
    dense.set_weights([kernel, b])


def _infer_fn(model, images):
    fn = tf.function(lambda x: model(x, training=False), autograph=False)
    x = tf.constant(images)
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="mobilenet_v3_small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--infer-rounds", type=int, default=15)
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--beam-width", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="time inference only")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (0: TF's)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    names = args.models.split(",") if args.models else model_names()
    if BASELINE not in names:
        names = [BASELINE, *names]
    max_labels = sequences.DEFAULT_MAX_LABELS
    images, multi_hot, seq = make_batch(args.batch_size, args.image_size, max_labels)
    print(
        f"encoder={args.encoder} image_size={args.image_size} batch={args.batch_size} "
        f"threads={tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} "
        f"warmup={args.warmup} rounds={args.rounds} tf={tf.__version__} keras={keras.__version__}"
    )

    models = {name: build(name, args) for name in names}
    if not args.no_train:
        time_training(models, names, args, images, multi_hot, seq)
    time_decoding(models, names, args, images)


def time_training(models, names, args, images, multi_hot, seq):
    """Print the training-step table."""
    train = round_robin(
        {n: train_fn(m, images, multi_hot, seq) for n, m in models.items()},
        args.warmup,
        args.rounds,
    )
    base_wall, base_cpu = train[BASELINE]
    print(f"\nTraining step (median per step; ratio vs {BASELINE}):")
    print(f"{'model':28s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}")
    for name in names:
        w, c = train[name]
        print(f"{name:28s} {w:8.3f} {w / base_wall:6.2f} {c:8.3f} {c / base_cpu:6.2f}")


def time_decoding(models, names, args, images):
    """Print the greedy vs beam inference table."""
    seq_names = [n for n in names if get_model_class(n).uses_sequences]
    if not seq_names:
        return
    infer = {}
    for name in seq_names:
        beam = build(name, args, decoding="beam", beam_width=args.beam_width)
        suppress_end(models[name])
        beam.set_weights(models[name].get_weights())
        infer[(name, "greedy")] = _infer_fn(models[name], images)
        infer[(name, "beam")] = _infer_fn(beam, images)
    infer[(BASELINE, "greedy")] = _infer_fn(models[BASELINE], images)
    timing = round_robin(infer, args.warmup, args.infer_rounds)
    print(
        f"\nInference (median per batch; beam-{args.beam_width} vs greedy; greedy vs {BASELINE}):"
    )
    print(
        f"{'model':28s} {'greedy s':>9s} {'beam s':>8s} {'beam/greedy':>11s} "
        f"{'(cpu)':>6s} {'greedy/bce':>10s} {'labels g/b':>10s}"
    )
    base_wall, _ = timing[(BASELINE, "greedy")]
    for name in seq_names:
        (g, gc), (b, bc) = timing[(name, "greedy")], timing[(name, "beam")]
        # Mean decoded labels per image: both should be max_labels here.
        g_labels = infer[(name, "greedy")]()["predicted"].sum(-1).mean()
        b_labels = infer[(name, "beam")]()["predicted"].sum(-1).mean()
        print(
            f"{name:28s} {g:9.3f} {b:8.3f} {b / g:11.2f} {bc / gc:6.2f} {g / base_wall:10.2f} "
            f"{g_labels:4.1f}/{b_labels:4.1f}"
        )


if __name__ == "__main__":
    main()
