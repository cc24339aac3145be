"""``kerasmlic demo``: the main job end to end on the built-in dataset.

synth → build → train the default model (``seq2seq_attention`` on the
``small`` encoder, config ``experiments/seq2seq_attention.yaml`` plus
:data:`DEMO_TRAIN`) → evaluate →
print the metric table and where the plots are. Sized for about five minutes
on two CPU cores of a fast host (4.4 min on 2026-11-30); slower hosts take
longer, and fewer epochs, fewer images or smaller images cost the 70 mAP
target or convergence (the runs on record: ``experiments/demo.md``).

The built-in dataset has three splits: training picks its best epoch (and
early stopping, when configured) on ``val``, and the final figures are
reported on ``test``, which no choice has seen.
"""

import os
import shutil
import time

DEMO_MODEL = "seq2seq_attention"

DEMO_SPLITS = {"train": 4000, "val": 1000, "test": 1000}
"""Images per split of the demo's built-in dataset."""

REPORT_SPLIT = "test"
"""The split the demo's final figures are on (val chose the best epoch)."""

DEMO_TRAIN = {"train.use_ema": True, "train.precise_bn_batches": 16}
"""What the demo adds to its model's config: validate, keep and export the weights'
moving average (momentum 0.99, about 100 steps: 0.8 of an epoch here), with BatchNorm
statistics re-estimated for them from 16 training batches before each validation.

The demo alone sets them: ``kerasmlic reproduce`` reads the same config for the
study, where every model must have the same recipe. Measured (``experiments/demo.md``,
where each run is listed): with them the last three val mAPs moved by more than 0.5
point far less often than without them, at the same test mAP.
"""

# Used when experiments/seq2seq_attention.yaml is not there (an installed
# package without the repository); keep in step with that file.
FALLBACK_CONFIG = {
    "model": {
        "name": DEMO_MODEL,
        "encoder": "small",
        "embedding_dim": 64,
        "hidden_dim": 128,
        "max_regions": 16,
    },
    "data": {"image_size": 64, "batch_size": 32},
    "train": {"epochs": 18, "learning_rate": 2e-3, "warmup_epochs": 0.5},
}


def demo_config(shard_dir, run_dir):
    """Return the demo's training config.

    Args:
        shard_dir: The built-in dataset's shard folder.
        run_dir: Where the demo run goes.

    Returns:
        A resolved config dict.
    """
    from kerasmlic.reporting.reproduce import model_config_path
    from kerasmlic.training.builder import resolve
    from kerasmlic.training.config import set_value

    # One path for the repository's yaml and the installed package's fallback.
    config = resolve(model_config_path(DEMO_MODEL) or FALLBACK_CONFIG)
    for key, value in {**DEMO_TRAIN, "data.dir": shard_dir, "run_dir": run_dir}.items():
        set_value(config, key, value)
    return config


def run_demo(workdir="data", seed=0, export_dir=os.path.join("saved_models", "demo")):
    """Synthesise the built-in dataset, build its shards, train, evaluate, plot.

    A finished demo run from an earlier call is replaced; an interrupted one
    resumes.

    Args:
        workdir: Folder for the dataset (``synth``), shards (``synth-shards``)
            and the run (``demo-run``).
        seed: Seed of the built-in dataset.
        export_dir: TF Serving model folder the demo exports to (replaced on
            each run; the model lands in ``EXPORT_DIR/1``).

    Returns:
        A dict: ``synth_dir``, ``shard_dir``, ``run_dir``, ``results`` (the
        metric dict on the test split), ``split``, ``plots`` (name → path),
        ``export`` (SavedModel path), ``seconds``.
    """
    from kerasmlic.data.build import build_split, format_summary
    from kerasmlic.data.synth import synthesize

    start = time.time()
    synth_dir = os.path.join(workdir, "synth")
    shard_dir = os.path.join(workdir, "synth-shards")
    run_dir = os.path.join(workdir, "demo-run")
    print(f"[1/7] synth: built-in COCO-format dataset → {synth_dir}", flush=True)
    summary = synthesize(synth_dir, seed=seed, **DEMO_SPLITS)
    splits = summary.get("splits", {})
    print(
        f"      {splits.get('train', {}).get('images', '?')} train + "
        f"{splits.get('val', {}).get('images', '?')} val + "
        f"{splits.get('test', {}).get('images', '?')} test images, "
        f"{summary.get('mean_labels_per_image', float('nan')):.2f} labels/image; "
        f"contact sheet {summary.get('contact_sheet')}",
        flush=True,
    )
    print(f"[2/7] build: COCO → TFRecord shards → {shard_dir}", flush=True)
    for split in DEMO_SPLITS:
        built = build_split(
            os.path.join(synth_dir, "annotations", f"instances_{split}.json"),
            os.path.join(synth_dir, split),
            split,
            shard_dir,
            workers=2,
        )
        print("      " + format_summary(built), flush=True)

    from kerasmlic.evaluation.rundir import is_finished
    from kerasmlic.training import train

    config = demo_config(shard_dir, run_dir)
    if is_finished(run_dir):
        shutil.rmtree(run_dir)  # the demo owns this folder; start a fresh run
    averaged = ", on the weights' moving average" if config["train"]["use_ema"] else ""
    print(
        f"[3/7] train: {config['model']['name']} on the {config['model'].get('encoder', 'tiny')} "
        f"encoder, {config['train']['epochs']} epochs{averaged} → {run_dir}",
        flush=True,
    )

    def log(line):
        if not line.startswith("images "):  # the metric table: step 4 prints it
            print("      " + line.replace("\n", "\n      "), flush=True)

    train(config, log=log)

    from kerasmlic.evaluation import evaluate_run

    print(f"[4/7] evaluate: best model (chosen on val) on the {REPORT_SPLIT} split", flush=True)
    results = evaluate_run(run_dir, shard_dir, REPORT_SPLIT, log=None)
    from kerasmlic.evaluation.evaluate import format_table

    print("      " + format_table(results).replace("\n", "\n      "), flush=True)

    from kerasmlic.reporting.results import write_report

    print("[5/7] report: plots", flush=True)
    report = write_report(
        [run_dir],
        shard_dir,
        os.path.join(run_dir, "report"),
        split=REPORT_SPLIT,
        command="kerasmlic demo",
        title=f"kerasmlic demo: {config['model']['name']} on the built-in dataset",
    )
    eval_json = os.path.join(run_dir, f"eval_{REPORT_SPLIT}.json")
    print(f"      report: {report['results']}; eval JSON: {eval_json}")
    export_path = _export_and_predict(run_dir, synth_dir, export_dir)
    seconds = time.time() - start
    print(
        f"done in {seconds / 60:.1f} min: {REPORT_SPLIT} mAP {100 * results['mAP']:.1f}, "
        f"F1@3 {100 * results['OF1_top3']:.1f}; plots:",
        flush=True,
    )
    for name, path in report["plots"].items():
        print(f"      {name}: {path}", flush=True)
    return {
        "synth_dir": synth_dir,
        "shard_dir": shard_dir,
        "run_dir": run_dir,
        "results": results,
        "split": REPORT_SPLIT,
        "plots": report["plots"],
        "export": export_path,
        "seconds": seconds,
    }


def _export_and_predict(run_dir, synth_dir, export_dir, num_images=3):
    """Export the demo run for TF Serving and label a few val images with it."""
    from kerasmlic.export import export_run
    from kerasmlic.export.predict import predict_files

    print(f"[6/7] export: TF Serving SavedModel → {export_dir}", flush=True)
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)  # the demo owns this folder: always version 1
    path = export_run(run_dir, export_dir, version=1, explain=False)
    print(f"      {path} (signature serving_default: image_bytes → scores, labels)", flush=True)
    val_dir = os.path.join(synth_dir, "val")
    images = sorted(os.listdir(val_dir))[:num_images]
    print(f"[7/7] predict: {num_images} val images with the exported model", flush=True)
    predict_files(export_dir, [os.path.join(val_dir, name) for name in images])
    return path
