"""Where a training step's time goes: encoder, head parts, loss, optimizer (TensorFlow profiler).

Same configuration as ``benchmarks/train_step.py`` (its builder, batch and
timing functions are imported): MobileNetV3Small at 224 px, batch 32, random
weights, CPU, 2 TF threads. For each model (default ``bce``,
``seq2seq_attention``, ``label_query``):

1. the step is timed without the profiler, round-robin over the models
   (median of ``--rounds``; ``step / bce`` as in train_step.py);
2. ``--steps`` steps are recorded with ``tf.profiler.experimental`` and the
   XSpace is summarised by TensorFlow's own converter
   (``xspace_to_tools_data(..., "framework_op_stats")``: per TF op, its
   self time, i.e. excluding the ops nested in it, such as a ``While``
   loop's body);
3. every op is put in a part by its name scope: ``encoder/...`` (forward)
   and ``gradient_tape/.../encoder/...`` (its gradient), the head's layers
   (``region_encoder``, the decoder's ``while`` loop, ``decoder_N``...), the
   loss (wrapped here in a ``loss`` name scope; the model is not changed),
   the optimizer (``adam/...``).

Op time is the time TF ops run, summed over the threads that run them; with
2 threads it can exceed the wall step. Each part's share of the op time is
also shown as wall milliseconds (share x median wall step), which is the
"ms of the step" figure. ``other`` is ops with no layer scope (the
teacher-forced first step of a loop, transposes, the loss tracker...);
``gradient sums`` are the backward pass's ``AddN`` ops, which add up the
gradients of tensors used more than once and carry no layer name.

Usage:
    python benchmarks/profile_step.py [--models bce,seq2seq_attention,label_query]
        [--encoder mobilenet_v3_small] [--image-size 224] [--batch-size 32]
        [--threads 2] [--warmup 2] [--rounds 3] [--steps 3] [--top 8]
"""

import argparse
import collections
import functools
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import train_step  # noqa: E402  (the benchmark's builder, batch and round-robin timer)
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin  # noqa: E402

from kerasmlic.data import sequences  # noqa: E402

BASELINE = train_step.BASELINE
LOSS_SCOPE = "loss"
OPTIMIZER_SCOPES = ("adam",)

# Head layers (the first scope under the model, or under a transformer decoder
# layer) -> a readable part name. Another layer is shown as ``head: <layer>``.
HEAD_PARTS = {
    "region_pool": "region pool + projection",
    "region_projection": "region pool + projection",
    "region_encoder": "region encoder (GRU over regions)",
    "key": "attention keys (once per image)",
    "embedding": "decoder label embedding",
    "logits": "output logits layer",
    "aux_logits": "aux linear head (label prior)",
    "input_projection": "input projection + positions + queries",
    "positions": "input projection + positions + queries",
    "label_queries": "input projection + positions + queries",
    "attention": "attention-map output",
    "scores": "scores + thresholds",
    "predicted": "scores + thresholds",
    "max_pool": "pooling",
    "avg_max_pool": "pooling",
}
TRANSFORMER_PARTS = {
    "self_attention": "transformer: self-attention",
    "cross_attention": "transformer: cross-attention",
    "ffn_in": "transformer: feed-forward",
    "ffn_out": "transformer: feed-forward",
    "norm": "transformer: layer norms",
    "add": "transformer: residual adds, reshapes",
}
DROPOUT = "dropout masks (random numbers)"
OTHER = "other (no layer scope)"


def _strip_suffix(component):
    """``decoder_0_1`` -> ``decoder``, ``encoder_1`` -> ``encoder`` (TF's uniquified scopes)."""
    return re.sub(r"(_\d+)+$", "", component)


def _components(path):
    """Scope components of an op path, without loop-body and gradient bookkeeping ones."""
    skip = {"gradient_tape", "body", "while_grad"}
    parts = [p for p in path.split("/") if p and p not in skip and not re.fullmatch(r"_\d+", p)]
    return [_strip_suffix(p) for p in parts]


def categorize(op_name, op_type, model_name, layer_names):
    """Return ``(part, direction)`` for one TF op of the training step.

    ``direction`` is ``"fwd"``, ``"bwd"`` or ``""`` (the optimizer's update).
    A gradient op inside a loop's gradient (``.../while_grad/.../gradients/X``)
    is placed by ``X``'s scope, or by the loop's when ``X`` has no layer scope.
    """
    direction = "bwd" if op_name.startswith("gradient_tape/") else "fwd"
    context, _, inner = op_name.rpartition("/gradients/")
    candidates = [_components(inner)]
    if context:
        candidates.append(_components(context) + candidates[0][-1:])
    for parts in candidates:
        if parts and parts[0] == model_name:  # a functional call: under the model's scope
            parts = parts[1:]
        if len(parts) < 2:
            continue
        top = parts[0]
        if top in OPTIMIZER_SCOPES:
            return "optimizer update (Adam)", ""
        if top == LOSS_SCOPE:
            return "loss", direction
        if top == "encoder":
            return "encoder (conv stack)", direction
        if top == "while":  # the recurrent decoder's teacher-forced loop (steps 2..T)
            if any(p in ("cell", "gru_cell", "lstm_cell") for p in parts):
                return "decoder loop: recurrent cell", direction
            if any(p.endswith("dropout") for p in parts):
                return DROPOUT, direction
            return "decoder loop: attention, state sums, loop ops", direction
        if top not in layer_names:
            continue
        if any(p.endswith("dropout") for p in parts):
            return DROPOUT, direction
        if top == "decoder" and len(parts) > 2:  # a transformer decoder layer
            sub = re.sub(r"\d+$", "", parts[1])
            return TRANSFORMER_PARTS.get(sub, f"transformer: {sub}"), direction
        if top == "decoder":
            return "transformer: residual adds, reshapes", direction
        if top in ("cell", "query", "score"):  # the first decoder step, before the loop
            return "decoder step 1 (outside the loop)", direction
        return HEAD_PARTS.get(top, f"head: {top}"), direction
    if op_type == "AddN":  # unscoped AddN: the gradient tape adding up a tensor's gradients
        return "gradient sums (AddN, no layer scope)", "bwd"
    return OTHER, direction


def _scope_loss(model):
    """Run the model's loss under a ``loss`` name scope (ops named ``loss/...``); same maths."""
    compute_loss = model.compute_loss

    @functools.wraps(compute_loss)
    def scoped(*args, **kwargs):
        with tf.name_scope(LOSS_SCOPE):
            return compute_loss(*args, **kwargs)

    object.__setattr__(model, "compute_loss", scoped)


def profile_ops(step, steps):
    """Run ``step`` ``steps`` times under the TF profiler.

    Returns:
        ``(rows, seconds)``: the framework_op_stats rows (one per TF op) and
        the wall seconds of the profiled steps.
    """
    logdir = tempfile.mkdtemp(prefix="profile_step_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds = time.perf_counter() - start
        finally:
            tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"the profiler wrote no .xplane.pb under {logdir}")
        data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(files, "framework_op_stats", {})
        if not ok:
            raise RuntimeError(f"framework_op_stats failed: {data[:300]!r}")
        table = json.loads(data)[0]  # the first table includes IDLE; its rows are per op
        columns = [c["id"] for c in table["cols"]]
        values = ([c.get("v") for c in row["c"]] for row in table["rows"])
        return [dict(zip(columns, row, strict=False)) for row in values], seconds
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def layer_names(model):
    """Scope names the model's layers (and their sublayers) give their ops."""
    layers = model._flatten_layers(include_self=False)  # noqa: SLF001 (Keras 3, all depths)
    names = {_strip_suffix(layer.name) for layer in layers}
    return names | {"decoder", "cell", "query", "score"}


def summarize(rows, model_name, names, steps):
    """Return ``({(part, direction): self ms per step}, {op: self ms per step}, {part: ops})``."""
    by_part = collections.Counter()
    by_op = collections.Counter()
    other_ops = collections.Counter()
    for row in rows:
        if row["type"] == "IDLE" or not row["total_self_time"]:
            continue
        ms = row["total_self_time"] / 1e3 / steps
        part = categorize(row["operation"], row["type"], model_name, names)
        by_part[part] += ms
        by_op[f"{row['type']} {row['operation']}"] += ms
        if part[0] == OTHER:
            other_ops[f"{row['type']} {row['operation']}"] += ms
    return by_part, by_op, other_ops


def print_table(name, by_part, by_op, other_ops, wall, profiled_wall, base_wall, top):
    """One model's table: parts by descending time, fwd/bwd columns, % and wall ms.

    ``wall``: the unprofiled median step; ``profiled_wall``: the mean profiled
    step (the op time's own wall time, for the threads busy).
    """
    total = sum(by_part.values())
    parts = collections.Counter()
    for (part, _), ms in by_part.items():
        parts[part] += ms
    ratio = f"{wall / base_wall:.2f}x {BASELINE}" if name != BASELINE else "baseline"
    print(
        f"\n{name}: wall step {1e3 * wall:.0f} ms ({ratio}); TF op time "
        f"{total:.0f} ms/step in profiled steps of {1e3 * profiled_wall:.0f} ms "
        f"({total / (1e3 * profiled_wall):.2f} threads busy on average)"
    )
    print(
        f"  {'part':42s} {'fwd ms':>8s} {'bwd ms':>8s} {'op ms':>8s} {'% step':>7s} "
        f"{'~wall ms':>9s}"
    )
    groups = {"encoder": 0.0, "head": 0.0, "loss": 0.0, "optimizer": 0.0, "other": 0.0}
    for part, ms in parts.most_common():
        fwd = by_part.get((part, "fwd"), 0.0)
        bwd = by_part.get((part, "bwd"), 0.0)
        share = ms / total
        print(
            f"  {part:42s} {fwd:8.1f} {bwd:8.1f} {ms:8.1f} {100 * share:6.1f}% "
            f"{1e3 * wall * share:9.0f}"
        )
        if part.startswith("encoder"):
            groups["encoder"] += ms
        elif part == "loss":
            groups["loss"] += ms
        elif part.startswith("optimizer"):
            groups["optimizer"] += ms
        elif part.startswith(("other", "gradient sums")):  # unattributed
            groups["other"] += ms
        else:
            groups["head"] += ms
    summary = ", ".join(
        f"{group} {100 * ms / total:.0f}% (~{wall * ms / total * 1e3:.0f} ms)"
        for group, ms in groups.items()
    )
    print(f"  => {summary}")
    if top:
        print(f"  top {top} ops (self ms/step):")
        for op, ms in by_op.most_common(top):
            print(f"    {ms:7.1f}  {op[:110]}")
        if other_ops:
            print(f"  heaviest ops in '{OTHER}':")
            for op, ms in other_ops.most_common(min(top, 4)):
                print(f"    {ms:7.1f}  {op[:110]}")
    return groups


def print_summary(names, groups, timing, profiled_wall):
    """All models side by side, and each one's extra wall time over the baseline split.

    A step's wall time is its op time / the threads busy on average, so the
    extra wall time over ``bce`` is the extra op time at ``bce``'s
    parallelism, plus what the lower parallelism (small sequential ops in a
    loop run on one thread) adds. That split uses the profiled steps' wall.
    """
    base_wall = 1e3 * timing[BASELINE][0]
    base_ops = sum(groups[BASELINE].values())
    base_profiled = 1e3 * profiled_wall[BASELINE]
    base_busy = base_ops / base_profiled
    print("\nSummary (op ms per step by group; wall: median unprofiled step):")
    cols = list(groups[BASELINE])
    print(
        f"  {'model':20s} {'wall ms':>8s} {'/' + BASELINE:>6s} {'prof. ms':>8s} {'op ms':>7s} "
        f"{'busy':>5s} " + " ".join(f"{c:>9s}" for c in cols)
    )
    for name in names:
        wall, ops = 1e3 * timing[name][0], sum(groups[name].values())
        profiled = 1e3 * profiled_wall[name]
        print(
            f"  {name:20s} {wall:8.0f} {wall / base_wall:6.2f} {profiled:8.0f} {ops:7.0f} "
            f"{ops / profiled:5.2f} " + " ".join(f"{groups[name][c]:9.1f}" for c in cols)
        )
    for name in names:
        if name == BASELINE:
            continue
        wall, ops = 1e3 * profiled_wall[name], sum(groups[name].values())
        by_ops = (ops - base_ops) / base_busy
        deltas = ", ".join(f"{c} {groups[name][c] - groups[BASELINE][c]:+.0f}" for c in cols)
        print(
            f"  {name} vs {BASELINE}: profiled wall {wall - base_profiled:+.0f} ms = extra op "
            f"time at {BASELINE}'s parallelism {by_ops:+.0f} ms (op ms: {deltas}) "
            f"+ lower parallelism {wall - base_profiled - by_ops:+.0f} ms"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"{BASELINE},seq2seq_attention,label_query")
    parser.add_argument("--encoder", default="mobilenet_v3_small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (0: TF's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled timed rounds")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per model")
    parser.add_argument("--top", type=int, default=8, help="heaviest ops to list (0: none)")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    names = args.models.split(",")
    if BASELINE not in names:
        names = [BASELINE, *names]
    images, multi_hot, seq = train_step.make_batch(
        args.batch_size, args.image_size, sequences.DEFAULT_MAX_LABELS
    )
    print(
        f"encoder={args.encoder} image_size={args.image_size} batch={args.batch_size} "
        f"threads={tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} "
        f"warmup={args.warmup} rounds={args.rounds} profiled steps={args.steps} "
        f"tf={tf.__version__} keras={keras.__version__}",
        flush=True,
    )
    steps = {}
    for name in names:
        model = train_step.build(name, args)
        _scope_loss(model)
        fn = train_step.train_fn(model, images, multi_hot, seq)
        steps[name] = (model.name, layer_names(model), fn)
    # Wall step times without the profiler (round-robin, as train_step.py).
    timing = train_step.round_robin(
        {name: fn for name, (_, _, fn) in steps.items()}, args.warmup, args.rounds
    )
    base_wall = timing[BASELINE][0]
    results, profiled_wall = {}, {}
    for name, (model_name, scopes, fn) in steps.items():
        rows, seconds = profile_ops(fn, args.steps)
        profiled_wall[name] = seconds / args.steps
        results[name] = summarize(rows, model_name, scopes, args.steps)
    groups = {
        name: print_table(
            name, *results[name], timing[name][0], profiled_wall[name], base_wall, args.top
        )
        for name in names
    }
    print_summary(names, groups, timing, profiled_wall)
    print(
        f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
