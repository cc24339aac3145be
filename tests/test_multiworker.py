"""Multi-worker training on two local worker processes (127.0.0.1, free ports).

Each test starts real ``MultiWorkerMirroredStrategy`` workers as subprocesses
(``train(config)`` with ``train.strategy=multiworker`` and a per-process
``TF_CONFIG``), bounds them in time and kills whatever is left in ``finally``.
"""

import csv
import os

import numpy as np
import pytest
from helpers_multiworker import SCRIPTED_MAP_ENV, free_ports, kill_all, start_worker, wait_all
from helpers_training import tiny_shards

from kerasmlic.errors import UsageError
from kerasmlic.training.multiworker import KILL_HOOK_ENV, describe_sharding
from kerasmlic.training.sharded_eval import merge_shards, predict_shard, shard_plan

TIMEOUT = 240  # seconds for a whole cluster run on 2 shared cores

# Relative tolerance between the two-worker and the single-process epoch losses.
# Both runs start from the same seeded weights and see the same global batch
# (8) of the same images, but not in the same order or with the same random
# crops (each worker draws its own augmentation), and BatchNorm normalises each
# replica's half batch on its own; on this task those differences move an
# epoch's mean loss by about 0.3% (54.13 vs 54.07, 29.93 vs 30.00).
LOSS_RTOL = 0.05


# Tolerance of "the same mAP" between sharded and single-process validation:
# the same weights and images, batched differently.
MAP_ATOL = 1e-6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 15 val images in two files of 7 and 8: an odd split, uneven shares.
    return tiny_shards(str(tmp_path_factory.mktemp("mw")), train=64, val=15)


def _config(shards, run_dir, epochs=2):
    return {
        "model": {"name": "bce"},
        "data": {"dir": shards, "image_size": 32, "batch_size": 8},
        "train": {
            "epochs": epochs,
            "strategy": "multiworker",
            "seed": 0,
            "verbose": 0,
            "learning_rate": 0.003,
        },
        "evaluation": {"batch_size": 16},
        "run_dir": str(run_dir),
    }


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _log(path):
    with open(path) as f:
        return f.read()


def _two_phase(config, fine_tune_lr=0.001):
    config["train"].update(freeze_encoder_epochs=1, fine_tune_learning_rate=fine_tune_lr)
    return config


def _run_two_workers(config, tmp_path, prefix, extra_env=None):
    """Run a chief and one worker to the end; check both exit 0 on the same weights.

    Args:
        config: The run's config.
        tmp_path: Folder for the weight dumps and logs (``{prefix}{0,1}.npz/.log``).
        prefix: Names this run's files apart from another run's in the same folder.
        extra_env: Environment added to both workers.

    Returns:
        The chief's log.
    """
    procs = []
    try:
        ports = free_ports(2)
        procs = [
            start_worker(config, tmp_path / f"{prefix}{i}.npz", tmp_path / f"{prefix}{i}.log",
                         ports=ports, index=i, extra_env=extra_env)
            for i in range(2)
        ]  # fmt: skip
        codes = wait_all(procs, TIMEOUT)
    finally:
        kill_all(procs)
    chief_log = _log(tmp_path / f"{prefix}0.log")
    assert codes == [0, 0], chief_log[-3000:] + _log(tmp_path / f"{prefix}1.log")[-3000:]
    w0, w1 = _weights(tmp_path / f"{prefix}0.npz"), _weights(tmp_path / f"{prefix}1.npz")
    assert w0.keys() == w1.keys()
    for key in w0:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    return chief_log


def _kill_worker_and_restart(config, tmp_path, kill_epoch):
    """Run two workers until worker 1 SIGKILLs itself, then restart both; check they agree.

    Worker 1 kills itself one step into epoch ``kill_epoch + 1``, after checkpoint
    ``kill_epoch``. The chief is then stuck in (or failed out of) a collective with
    the dead worker, so, as a cluster manager would, the whole job is restarted.

    Args:
        config: The run's config (``run_dir`` under ``tmp_path``).
        tmp_path: Folder for the workers' weight dumps and logs.
        kill_epoch: The last epoch checkpointed before the kill (1-based).

    Returns:
        The restarted chief's log, once both workers exited 0, resumed after
        ``kill_epoch`` and ended on the same weights.
    """
    procs = []
    try:
        ports = free_ports(2)
        procs = [
            start_worker(config, tmp_path / "a0.npz", tmp_path / "a0.log", ports=ports, index=0),
            start_worker(
                config,
                tmp_path / "a1.npz",
                tmp_path / "a1.log",
                ports=ports,
                index=1,
                extra_env={KILL_HOOK_ENV: str(kill_epoch)},
            ),
        ]
        assert wait_all(procs[1:], TIMEOUT) == [-9], _log(tmp_path / "a1.log")[-3000:]
        wait_all(procs[:1], 10)
    finally:
        kill_all(procs)
    ckpt = os.path.join(config["run_dir"], "backup", "multiworker")
    assert os.path.isfile(os.path.join(ckpt, f"ckpt-{kill_epoch}.index"))
    assert not os.path.exists(os.path.join(ckpt, f"ckpt-{kill_epoch + 1}.index"))
    chief_log = _run_two_workers(config, tmp_path, "b")
    assert f"resuming after epoch {kill_epoch}" in chief_log
    return chief_log


def _val_map_of_best(run_dir):
    """The sharded val mAP logged at the best epoch, and the chief's own evaluation of it."""
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    logged = float(_history(run_dir)[summary["best_epoch"] - 1]["val_mAP"])
    alone = json.loads((run_dir / "eval_val.json").read_text())["mAP"]
    return logged, alone


def test_describe_sharding_by_file_or_data():
    assert describe_sharding(4, 2, 8, 2)[0] == "file"
    policy, message = describe_sharding(1, 2, 8, 2)
    assert policy == "data" and "keeps 1 record in 2" in message and "--shards >= 2" in message
    with pytest.raises(UsageError, match="does not split evenly between 2 replicas"):
        describe_sharding(2, 2, 7, 2)


def test_shard_plan_gives_every_record_to_one_worker():
    policy, plans = shard_plan([7, 8], 2)
    assert policy == "file"
    assert [p.tolist() for p in plans] == [list(range(7)), list(range(7, 15))]
    policy, plans = shard_plan([3, 0, 5, 2], 3)  # worker 0 reads files 0 and 3
    assert policy == "file" and plans[0].tolist() == [0, 1, 2, 8, 9] and plans[1].size == 0
    policy, plans = shard_plan([15], 2)
    assert policy == "data" and plans[0].tolist() == list(range(0, 15, 2))
    for counts, workers in (([7, 8], 2), ([3, 0, 5, 2], 3), ([15], 2), ([2], 4), ([4, 4, 4], 5)):
        merged = np.sort(np.concatenate(shard_plan(counts, workers)[1]))
        assert merged.tolist() == list(range(sum(counts))), (counts, workers)


def test_merge_shards_restores_record_order_and_refuses_gaps():
    ids = np.array([10, 11, 12, 13, 14])
    positions = np.array([1, 3, 0, 2, 4])  # worker 0 then worker 1, by record
    scores = positions[:, None].astype("float32") * np.ones((1, 2), "float32")
    ordered, predicted = merge_shards(positions, ids[positions], scores, scores + 1, ids)
    np.testing.assert_array_equal(ordered[:, 0], np.arange(5))
    np.testing.assert_array_equal(predicted[:, 0], np.arange(5) + 1)
    with pytest.raises(UsageError, match="not each image once"):
        merge_shards(positions[:4], ids[positions[:4]], scores[:4], scores[:4], ids)
    with pytest.raises(UsageError, match="not each image once"):
        merge_shards([0, 0, 1, 2, 3], ids[[0, 0, 1, 2, 3]], scores, scores, ids)
    with pytest.raises(UsageError, match="image ids are not in the order"):
        merge_shards(positions, ids, scores, scores, ids)


def test_sharded_prediction_equals_one_process(shards):
    """Two workers' shares, by file and by record, merge into predict_split's output."""
    import tensorflow as tf

    from kerasmlic.data.manifest import load_manifest
    from kerasmlic.evaluation.predict import predict_split
    from kerasmlic.metrics import evaluate_predictions
    from kerasmlic.models.registry import build_model

    manifest = load_manifest(shards)
    counts = [s["num_examples"] for s in manifest["splits"]["val"]["shards"]]
    assert sum(counts) % 2 == 1 and len(set(counts)) == 2  # odd total, uneven files
    num_classes = len(manifest["classes"])
    model = build_model("bce", num_classes=num_classes, image_size=32)
    alone = predict_split(model, shards, "val", batch_size=4)
    forward = tf.function(lambda x: model(x, training=False))
    expected = evaluate_predictions(alone["y_true"], alone["scores"], alone["predicted"])
    # "data" shards by record: the plan of one file holding every record.
    for policy, layout in (("file", counts), ("data", [sum(counts)])):
        plans = shard_plan(layout, 2)[1]
        parts = [
            predict_shard(
                forward,
                shards,
                "val",
                image_size=32,
                normalization=model.normalization,
                batch_size=4,
                num_classes=num_classes,
                policy=policy,
                num_workers=2,
                worker_index=w,
            )
            for w in range(2)
        ]
        assert [len(ids) for ids, _, _ in parts] == [len(p) for p in plans]
        ids, scores, predicted = (np.concatenate(a) for a in zip(*parts, strict=True))
        scores, predicted = merge_shards(
            np.concatenate(plans), ids, scores, predicted, alone["image_ids"]
        )
        np.testing.assert_allclose(scores, alone["scores"], atol=1e-6)
        np.testing.assert_array_equal(predicted, alone["predicted"])
        results = evaluate_predictions(alone["y_true"], scores, predicted)
        assert results["mAP"] == pytest.approx(expected["mAP"], abs=MAP_ATOL)


def test_two_workers_match_each_other_and_single_process(shards, tmp_path):
    ports = free_ports(2)
    config = _config(shards, tmp_path / "run2")
    procs = []
    try:
        for i in range(2):
            procs.append(
                start_worker(
                    config, tmp_path / f"w{i}.npz", tmp_path / f"w{i}.log", ports=ports, index=i
                )
            )
        # The reference: one process, same driver, same global batch and seed.
        single = _config(shards, tmp_path / "run1")
        procs.append(start_worker(single, tmp_path / "single.npz", tmp_path / "single.log"))
        codes = wait_all(procs, TIMEOUT)
    finally:
        kill_all(procs)
    logs = [_log(tmp_path / n) for n in ("w0.log", "w1.log", "single.log")]
    assert codes == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "input sharding: by file (2 shard files over 2 workers)" in logs[0]
    assert "global batch 8 = 2 x 4" in logs[0]

    # Identical weights on both workers (BatchNorm statistics included).
    w0, w1 = _weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")
    assert w0.keys() == w1.keys() and len(w0) > 10
    for key in w0:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)

    # Only the chief wrote the run dir; the other worker's temp folder is gone.
    run2 = tmp_path / "run2"
    assert (run2 / "summary.json").is_file() and (run2 / "best.keras").is_file()
    assert (run2 / "backup" / "multiworker" / "ckpt-2.index").is_file()
    rows = _history(run2)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    losses = [float(r["loss"]) for r in rows]
    assert losses[1] < 0.8 * losses[0], losses  # the loss falls

    single_losses = [float(r["loss"]) for r in _history(tmp_path / "run1")]
    np.testing.assert_allclose(losses, single_losses, rtol=LOSS_RTOL)


def test_two_phases_match_single_process_and_validation_is_sharded(shards, tmp_path):
    """Freeze-then-fine-tune on two workers, against ``train`` (model.fit) in one process."""
    import json

    config = _two_phase(_config(shards, tmp_path / "run2"))
    single = _two_phase(_config(shards, tmp_path / "run1"))
    single["train"]["strategy"] = "default"
    procs = []
    try:
        ports = free_ports(2)
        procs = [
            start_worker(config, tmp_path / f"w{i}.npz", tmp_path / f"w{i}.log",
                         ports=ports, index=i)
            for i in range(2)
        ]  # fmt: skip
        procs.append(start_worker(single, tmp_path / "single.npz", tmp_path / "single.log"))
        codes = wait_all(procs, TIMEOUT)
    finally:
        kill_all(procs)
    logs = [_log(tmp_path / n) for n in ("w0.log", "w1.log", "single.log")]
    assert codes == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)
    chief_log = logs[0]
    assert "phase 1: epochs 1-1, encoder frozen" in chief_log
    assert "phase 2: epochs 2-2, encoder fine-tuned" in chief_log
    # The chief predicted the 7 images of the first val file, worker 1 the other 8.
    assert "validation sharding: by file" in chief_log
    assert "15 images over 2 worker(s); this worker predicts 7)" in chief_log

    w0, w1 = _weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")
    for key in w0:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    run2 = tmp_path / "run2"
    rows = _history(run2)
    assert [int(float(r["phase"])) for r in rows] == [1, 2]
    # Each phase ran its own schedule down to 1% of its own peak rate.
    lrs = [float(r["learning_rate"]) for r in rows]
    np.testing.assert_allclose(lrs, [0.01 * 0.003, 0.01 * 0.001], rtol=1e-5)
    assert json.loads((run2 / "state.json").read_text())["phases_done"] == 2
    assert (run2 / "checkpoints" / "phase1.weights.h5").is_file()
    single_losses = [float(r["loss"]) for r in _history(tmp_path / "run1")]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], single_losses, rtol=LOSS_RTOL)

    # The sharded val mAP of the best epoch is the chief's one-process
    # evaluation of the same saved model (eval_val.json).
    logged, alone = _val_map_of_best(run2)
    assert logged == pytest.approx(alone, abs=MAP_ATOL)


@pytest.mark.slow  # 100-150 s on 2 shared cores: four worker start-ups
def test_killed_worker_resumes_inside_phase_two(shards, tmp_path):
    config = _two_phase(_config(shards, tmp_path / "run", epochs=3))
    # Worker 1 SIGKILLs itself one step into epoch 3: the second of phase 2.
    chief_log = _kill_worker_and_restart(config, tmp_path, kill_epoch=2)
    assert "phase 1:" not in chief_log and "phase 2: epochs 2-3, encoder fine-tuned" in chief_log
    assert "epoch 2/3" not in chief_log and "epoch 3/3" in chief_log
    rows = _history(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [int(float(r["phase"])) for r in rows] == [1, 2, 2]
    # Phase 2's optimiser was restored, not rebuilt: its schedule (warm-up over
    # epoch 2, cosine over epoch 3) ends at 1% of the fine-tuning peak.
    lrs = [float(r["learning_rate"]) for r in rows]
    np.testing.assert_allclose(lrs[1:], [0.001, 0.01 * 0.001], rtol=1e-5)


@pytest.mark.slow  # about 40 s: two one-process runs
def test_restart_at_the_phase_boundary_starts_phase_two_afresh(shards, tmp_path):
    # Killed one step into epoch 2: the last checkpoint is phase 1's end.
    config = _two_phase(_config(shards, tmp_path / "run", epochs=2))
    procs = []
    try:
        procs = [
            start_worker(
                config, tmp_path / "a.npz", tmp_path / "a.log", extra_env={KILL_HOOK_ENV: "1"}
            )
        ]
        assert wait_all(procs, TIMEOUT) == [-9], _log(tmp_path / "a.log")[-3000:]
        procs = [start_worker(config, tmp_path / "b.npz", tmp_path / "b.log")]
        codes = wait_all(procs, TIMEOUT)
    finally:
        kill_all(procs)
    log = _log(tmp_path / "b.log")
    assert codes == [0], log[-3000:]
    assert "resuming after epoch 1" in log and "phase 1:" not in log
    assert "phase 2: epochs 2-2, encoder fine-tuned" in log and "epoch 2/2" in log
    rows = _history(tmp_path / "run")
    assert [int(float(r["phase"])) for r in rows] == [1, 2]
    # A fresh phase-2 optimiser: its one-epoch schedule ends at 1% of its peak.
    np.testing.assert_allclose(float(rows[1]["learning_rate"]), 0.01 * 0.001, rtol=1e-5)
    # On phase 1's restored weights (from scratch, that epoch's loss is higher
    # than phase 1's: about 96 against 54).
    assert float(rows[1]["loss"]) < 0.8 * float(rows[0]["loss"]), rows


# In the default run (issue "Scale-out" asks for both two-worker tests in CI):
# about 90-140 s on 2 cores, four worker start-ups.
def test_killed_worker_resumes_from_last_checkpoint(shards, tmp_path):
    config = _config(shards, tmp_path / "run", epochs=3)
    # Worker 1 SIGKILLs itself one step into epoch 2 (after checkpoint 1).
    chief_log = _kill_worker_and_restart(config, tmp_path, kill_epoch=1)
    assert "epoch 1/3" not in chief_log and "epoch 2/3" in chief_log  # epoch 1 not redone
    assert [int(r["epoch"]) for r in _history(tmp_path / "run")] == [0, 1, 2]


@pytest.mark.slow  # about 60 s: a recurrent model, sharded by record
def test_two_workers_recurrent_model_sharded_by_data(shards, tmp_path):
    from kerasmlic.data.build import build_split

    synth = os.path.join(os.path.dirname(shards), "synth")
    one_shard = str(tmp_path / "one_shard")
    for split in ("train", "val"):
        build_split(
            os.path.join(synth, "annotations", f"instances_{split}.json"),
            os.path.join(synth, split),
            split,
            one_shard,
            shards=1,
            progress=False,
        )
    config = _config(one_shard, tmp_path / "run", epochs=1)
    config["model"] = {"name": "seq2seq"}
    config["train"]["steps_per_epoch"] = 4
    chief_log = _run_two_workers(config, tmp_path, "w")
    assert "input sharding: by data (1 shard file(s) < 2 workers" in chief_log
    assert np.isfinite(float(_history(tmp_path / "run")[0]["loss"]))
    # One val file: validation sharded by record (8 and 7 of 15), same mAP as one process.
    assert "validation sharding: by record" in chief_log and "this worker predicts 8)" in chief_log
    logged, alone = _val_map_of_best(tmp_path / "run")
    assert logged == pytest.approx(alone, abs=MAP_ATOL)


@pytest.mark.slow  # 40-45 s: three worker processes, 5 epochs
def test_two_workers_stop_early_together_deterministic_and_calibrated(shards, tmp_path):
    import json

    config = _config(shards, tmp_path / "run", epochs=5)
    config["train"].update(early_stopping_patience=2, deterministic=True)
    config["evaluation"].update(calibrate=True, holdout_fraction=0.25)
    # The chief's val mAP: best at epoch 2, then two passes without a gain.
    env = {SCRIPTED_MAP_ENV: "0.5,0.6,0.55,0.6,0.9"}
    # Both workers leave after epoch 4 with the same weights.
    chief_log = _run_two_workers(config, tmp_path, "w", extra_env=env)
    assert "early stop after epoch 4" in chief_log and "epoch 5/5" not in chief_log
    run = tmp_path / "run"
    assert [float(r["val_mAP"]) for r in _history(run)] == [0.5, 0.6, 0.55, 0.6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early_at"] == 4 and summary["best_epoch"] == 2
    assert summary["thresholds_from"] == "train-holdout"
    assert json.loads((run / "eval_val.json").read_text())["thresholds_from"] == "train-holdout"
    assert "held out of 'train'" in chief_log
