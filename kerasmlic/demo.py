"""``kerasmlic demo``: the main job end to end on the built-in dataset."""

import os
import time


def run_demo(workdir="data", seed=0):
    """Synthesise the built-in dataset, build its shards and look at a batch.

    Args:
        workdir: Folder for the dataset (``synth``) and shards (``synth-shards``).
        seed: Seed of the built-in dataset.

    Returns:
        A dict of what was produced (paths, counts).
    """
    from kerasmlic.data.build import build_split, format_summary
    from kerasmlic.data.synth import synthesize

    start = time.time()
    synth_dir = os.path.join(workdir, "synth")
    shard_dir = os.path.join(workdir, "synth-shards")
    print(f"[1/3] synth: built-in COCO-format dataset → {synth_dir}")
    summary = synthesize(synth_dir, seed=seed)
    print(
        f"      {summary['num_train']} train + {summary['num_val']} val images, "
        f"{summary['mean_labels_train']:.2f} labels/image; contact sheet {summary['contact_sheet']}"
    )
    print(f"[2/3] build: COCO → TFRecord shards → {shard_dir}")
    for split in ("train", "val"):
        built = build_split(
            os.path.join(synth_dir, "annotations", f"instances_{split}.json"),
            os.path.join(synth_dir, split),
            split,
            shard_dir,
            workers=2,
        )
        print("      " + format_summary(built))
    print("[3/3] tf.data: one training batch")
    batch = _look_at_a_batch(shard_dir)
    print(f"done in {time.time() - start:.0f}s")
    return {"synth_dir": synth_dir, "shard_dir": shard_dir, **batch}


def _look_at_a_batch(shard_dir):
    from kerasmlic.data.manifest import class_names, load_manifest
    from kerasmlic.data.pipeline import make_dataset

    names = class_names(load_manifest(shard_dir))
    ds = make_dataset(
        shard_dir, "train", image_size=64, batch_size=8, training=True, label_order="frequent_first"
    )
    images, targets = next(iter(ds))
    print(
        f"      images {tuple(images.shape)} {images.dtype.name} in "
        f"[{float(images.numpy().min()):.2f}, {float(images.numpy().max()):.2f}], "
        f"multi-hot {tuple(targets['multi_hot'].shape)}, "
        f"sequence {tuple(targets['sequence'].shape)}"
    )
    for row in targets["multi_hot"].numpy()[:3]:
        print("      labels: " + ", ".join(names[i] for i in row.nonzero()[0]))
    return {"batch_shape": tuple(images.shape)}
