"""`kerasmlic build`: shards + dataset.json, bad input, strict mode, resume, workers."""

import io
import json
import os
import subprocess
import sys
import textwrap

import helpers_build
import numpy as np
import pytest
import tensorflow as tf
from helpers_data import write_tiny_coco
from PIL import Image

from kerasmlic.data import schema, shard_writer
from kerasmlic.data.build import (
    build_split,
    default_num_shards,
    format_summary,
    shard_name,
    sidecar_name,
)
from kerasmlic.data.manifest import file_sha256, load_manifest, shard_paths
from kerasmlic.data.shard_writer import CHUNK_SIZE
from kerasmlic.errors import UsageError


def read_split(out, split):
    """Parse every example of a split eagerly: {image_id: parsed dict (numpy)}."""
    examples = {}
    for path in shard_paths(out, split):
        for record in tf.data.TFRecordDataset(path):
            ex = {k: v.numpy() for k, v in schema.parse_example(record).items()}
            image_id = int(ex[schema.IMAGE_ID])
            assert image_id not in examples, f"image {image_id} in two places"
            examples[image_id] = ex
    return examples


def shard_ids(out, split):
    """Image ids per shard file, in order."""
    result = {}
    for path in shard_paths(out, split):
        ids = [
            int(schema.parse_example(r)[schema.IMAGE_ID].numpy())
            for r in tf.data.TFRecordDataset(path)
        ]
        result[os.path.basename(path)] = ids
    return result


def expected_label_ids(tiny, image_id):
    index = {
        c["id"]: i for i, c in enumerate(sorted(tiny.dataset["categories"], key=lambda c: c["id"]))
    }
    return sorted(index[c] for c in tiny.labels[image_id])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny = write_tiny_coco(root, num_images=12, image_size=32, seed=1, num_empty=2)
    out = str(root / "out")
    summary = build_split(tiny.annotations, tiny.images, "train", out, progress=False)
    return tiny, out, summary


def test_every_labelled_image_is_written_once_and_round_trips(built):
    tiny, out, summary = built
    examples = read_split(out, "train")
    labelled = {i for i, labels in tiny.labels.items() if labels}
    assert len(labelled) == 12
    assert set(examples) == labelled
    assert summary["num_examples"] == 12 and summary["num_empty_dropped"] == 2
    index = {c: i for i, c in enumerate(sorted(c["id"] for c in tiny.dataset["categories"]))}
    for image_id, ex in examples.items():
        want = tiny.labels[image_id]
        assert ex[schema.LABEL_IDS].tolist() == [index[c] for c in want]
        np.testing.assert_allclose(
            ex[schema.LABEL_AREAS], [tiny.areas[image_id][c] for c in want], rtol=1e-6
        )
        assert ex[schema.LABEL_INSTANCES].tolist() == [tiny.instances[image_id][c] for c in want]
        assert (ex[schema.IMAGE_HEIGHT], ex[schema.IMAGE_WIDTH]) == (32, 32)
        # Valid RGB JPEGs are stored byte for byte.
        with open(tiny.path_of(image_id), "rb") as f:
            assert ex[schema.IMAGE_ENCODED] == f.read()
        assert ex[schema.IMAGE_FILENAME].decode() == f"{image_id:012d}.jpg"


def test_shards_parse_inside_tf_data_map(built):
    tiny, out, _ = built

    def parse_and_decode(record):
        ex = schema.parse_example(record)
        image = tf.io.decode_jpeg(ex[schema.IMAGE_ENCODED], channels=3)
        return ex[schema.IMAGE_ID], tf.shape(image), ex[schema.LABEL_IDS]

    ds = tf.data.TFRecordDataset(shard_paths(out, "train")).map(parse_and_decode)
    seen = {}
    for image_id, shape, ids in ds:
        seen[int(image_id)] = (shape.numpy().tolist(), ids.numpy().tolist())
    assert len(seen) == 12
    for image_id, (shape, ids) in seen.items():
        assert shape == [32, 32, 3]
        assert ids == expected_label_ids(tiny, image_id)


def test_manifest_records_shards_and_label_statistics(built):
    tiny, out, _ = built
    manifest = load_manifest(out)
    assert [c["coco_id"] for c in manifest["classes"]] == [1, 2, 3, 4, 5]
    assert [c["index"] for c in manifest["classes"]] == [0, 1, 2, 3, 4]
    info = manifest["splits"]["train"]
    # 12 images: default is min(8, n) shards, contiguous blocks in id order.
    assert [s["file"] for s in info["shards"]] == [shard_name("train", i, 8) for i in range(8)]
    ids = shard_ids(out, "train")
    flat = [i for block in ids.values() for i in block]
    assert flat == sorted(flat)
    for shard in info["shards"]:
        assert shard["sha256"] == file_sha256(os.path.join(out, shard["file"]))
        assert shard["num_examples"] == len(ids[shard["file"]])
    assert info["num_examples"] == 12

    labelled = [i for i, labels in tiny.labels.items() if labels]
    onehot = np.zeros((12, 5), np.int64)
    area = np.zeros((12, 5))
    for row, image_id in enumerate(labelled):
        for c in tiny.labels[image_id]:
            onehot[row, c - 1] = 1
            area[row, c - 1] = tiny.areas[image_id][c]
    counts = onehot.sum(0)
    assert info["label_counts"] == counts.tolist()
    assert info["cooccurrence"] == (onehot.T @ onehot).tolist()
    mean_area = np.divide(area.sum(0), counts, out=np.zeros(5), where=counts > 0)
    np.testing.assert_allclose(info["label_mean_area"], mean_area, atol=1e-6)
    assert info["max_labels"] == int(onehot.sum(1).max())
    assert info["skipped"] == [] and info["num_empty_dropped"] == 2
    assert info["options"] == {"max_side": None, "keep_empty": False}
    assert info["source"]["images"] == os.path.abspath(tiny.images)


def test_summary_is_one_line(built):
    _, _, summary = built
    line = format_summary(summary)
    assert "\n" not in line
    assert line.startswith("train: 12 examples in 8 shards (8 written, 0 reused)")
    assert "0 skipped" in line and "2 without labels dropped" in line


def test_keep_empty_sparse_ids_and_max_side(tmp_path):
    tiny = write_tiny_coco(
        tmp_path, num_images=4, image_size=40, seed=2, category_ids=[90, 1, 5], num_empty=1
    )
    # One non-square image, to check the aspect ratio survives --max-side.
    wide = tiny.path_of(1)
    Image.new("RGB", (40, 20), (10, 200, 10)).save(wide)
    tiny.dataset["images"][0].update(width=40, height=20)
    tiny.save()
    out = str(tmp_path / "out")
    summary = build_split(
        tiny.annotations, tiny.images, "val", out, max_side=16, keep_empty=True, progress=False
    )
    assert summary["num_examples"] == 5 and summary["reencoded"] == {"max_side": 5}
    manifest = load_manifest(out)
    assert [(c["index"], c["coco_id"]) for c in manifest["classes"]] == [(0, 1), (1, 5), (2, 90)]
    examples = read_split(out, "val")
    index = {1: 0, 5: 1, 90: 2}
    for image_id, ex in examples.items():
        assert ex[schema.LABEL_IDS].tolist() == [index[c] for c in tiny.labels[image_id]]
        h, w = int(ex[schema.IMAGE_HEIGHT]), int(ex[schema.IMAGE_WIDTH])
        img = Image.open(io.BytesIO(ex[schema.IMAGE_ENCODED]))
        assert img.size == (w, h) and img.mode == "RGB"
        assert (w, h) == ((16, 8) if image_id == 1 else (16, 16))
    empty_id = 1 + 3 * 4
    assert examples[empty_id][schema.LABEL_IDS].tolist() == []
    assert manifest["splits"]["val"]["options"] == {"max_side": 16, "keep_empty": True}


def test_second_split_shares_the_class_list(built, tmp_path):
    tiny, out, _ = built
    out2 = str(tmp_path / "out")
    build_split(tiny.annotations, tiny.images, "train", out2, shards=2, progress=False)
    val = write_tiny_coco(tmp_path / "val", num_images=3, seed=9, first_id=1000)
    build_split(val.annotations, val.images, "val", out2, progress=False)
    manifest = load_manifest(out2)
    assert sorted(manifest["splits"]) == ["train", "val"]
    assert manifest["splits"]["train"]["num_examples"] == 12
    assert manifest["splits"]["val"]["num_examples"] == 3

    other = write_tiny_coco(tmp_path / "other", num_images=3, seed=9, num_classes=4)
    before = open(os.path.join(out2, "dataset.json")).read()
    with pytest.raises(UsageError, match="differ from the class list"):
        build_split(other.annotations, other.images, "test", out2, progress=False)
    assert open(os.path.join(out2, "dataset.json")).read() == before
    assert not [n for n in os.listdir(out2) if n.startswith("test")]


def test_workers_2_writes_the_same_shards_as_workers_1(built, tmp_path):
    tiny, out, _ = built
    out2 = str(tmp_path / "out2")
    summary = build_split(tiny.annotations, tiny.images, "train", out2, workers=2, progress=False)
    assert summary["shards_written"] == 8
    one = load_manifest(out)["splits"]["train"]
    two = load_manifest(out2)["splits"]["train"]
    assert two["shards"] == one["shards"]  # same files, counts and sha256
    for key in ("label_counts", "cooccurrence", "label_mean_area", "skipped", "num_examples"):
        assert two[key] == one[key]
    assert set(read_split(out2, "train")) == set(read_split(out, "train"))


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def make_bad_corpus(root):
    """A tiny dataset with one image per bad-input case. Returns (tiny, expected)."""
    tiny = write_tiny_coco(root, num_images=20, image_size=32, seed=5)
    ds = tiny.dataset
    ids = [img["id"] for img in ds["images"]]
    by_id = {img["id"]: img for img in ds["images"]}

    def path(i):
        return os.path.join(tiny.images, by_id[i]["file_name"])

    skip = {}  # file name -> reason fragment
    # Corrupt / unreadable files.
    data = open(path(ids[0]), "rb").read()
    open(path(ids[0]), "wb").write(data[: len(data) // 2])
    skip[by_id[ids[0]]["file_name"]] = "(?i)truncated"
    open(path(ids[1]), "wb").close()
    skip[by_id[ids[1]]["file_name"]] = "empty file"
    open(path(ids[2]), "wb").write(b"\x89PNG garbage" * 20)
    skip[by_id[ids[2]]["file_name"]] = "not a readable image"
    os.remove(path(ids[3]))
    skip[by_id[ids[3]]["file_name"]] = "missing file"
    # Paths outside the images folder (real files there, to prove they are not read).
    outside = os.path.join(root, "outside.jpg")
    Image.new("RGB", (32, 32)).save(outside)
    by_id[ids[4]]["file_name"] = outside
    skip[outside] = "absolute"
    by_id[ids[5]]["file_name"] = "../outside.jpg"
    skip["../outside.jpg"] = "outside the images folder"
    os.symlink(outside, os.path.join(tiny.images, "link.jpg"))
    by_id[ids[6]]["file_name"] = "link.jpg"
    skip["link.jpg"] = "outside the images folder"
    # Absurd sizes.
    by_id[ids[7]].update(width=0)
    skip[by_id[ids[7]]["file_name"]] = "declared size 0x32 is out of range"
    by_id[ids[8]].update(width=30000, height=30000)
    skip[by_id[ids[8]]["file_name"]] = "declared size 30000x30000"
    Image.new("L", (20001, 4)).save(path(ids[9]))
    by_id[ids[9]].update(width=20001, height=4)
    skip[by_id[ids[9]]["file_name"]] = "declared size 20001x4"
    Image.new("L", (20001, 4)).save(path(ids[10]))
    by_id[ids[10]].update(width=None, height=None)
    skip[by_id[ids[10]]["file_name"]] = "image is 20001x4 px"
    by_id[ids[11]].update(width=640, height=100)
    skip[by_id[ids[11]]["file_name"]] = "disagrees"
    # Kept byte for byte (TensorFlow decodes them): CMYK and grayscale JPEGs, a PNG
    # behind .jpg. Converted to a lossless PNG: a TIFF behind .jpg.
    converted = {ids[12]: None, ids[13]: None, ids[14]: None, ids[15]: "converted"}
    Image.open(path(ids[12])).convert("CMYK").save(path(ids[12]), format="JPEG")
    Image.open(path(ids[13])).convert("L").save(path(ids[13]), format="JPEG")
    Image.open(path(ids[14])).save(path(ids[14]), format="PNG")
    Image.open(path(ids[15])).save(path(ids[15]), format="TIFF")
    # Annotation problems: the annotations are dropped, the images are kept.
    ds["annotations"].append({"id": 900, "image_id": 123456, "category_id": 1, "area": 5.0})
    ds["annotations"].append({"id": 901, "image_id": ids[15], "category_id": 77, "area": 5.0})
    ds["images"].append({"id": ids[16], "file_name": "dup.jpg", "width": 32, "height": 32})
    skip["dup.jpg"] = "duplicate image id"
    tiny.save()
    valid = set(ids) - {ids[i] for i in range(12)}
    return tiny, skip, valid, converted


def test_bad_input_is_skipped_or_converted_never_lost(tmp_path):
    tiny, skip, valid, converted = make_bad_corpus(tmp_path)
    out = str(tmp_path / "out")
    summary = build_split(tiny.annotations, tiny.images, "train", out, shards=3, progress=False)

    examples = read_split(out, "train")
    assert set(examples) == valid
    assert summary["num_examples"] == len(valid) == 8
    for image_id, ex in examples.items():
        stored = ex[schema.IMAGE_ENCODED]
        source = open(tiny.path_of(image_id), "rb").read()
        if converted.get(image_id) == "converted":
            img = Image.open(io.BytesIO(stored))
            assert (img.format, img.size) == ("PNG", (32, 32))
            src = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"))
            np.testing.assert_array_equal(np.asarray(img.convert("RGB")), src)  # lossless
        else:
            assert stored == source  # the user's bytes, whatever the format
        assert ex[schema.LABEL_IDS].tolist() == expected_label_ids(tiny, image_id)
    assert summary["reencoded"] == {"converted": 1}

    info = load_manifest(out)["splits"]["train"]
    recorded = {s["file"]: s for s in info["skipped"]}
    for file_name, reason in skip.items():
        assert file_name in recorded, file_name
        assert recorded[file_name]["reason"] and __import__("re").search(
            reason, recorded[file_name]["reason"]
        ), (file_name, recorded[file_name]["reason"])
    annotation_skips = [s for s in info["skipped"] if s.get("annotation_id") in (900, 901)]
    assert [s["annotation_id"] for s in annotation_skips] == [900, 901]
    assert "unknown category id 77" in annotation_skips[1]["reason"]
    assert summary["num_skipped"] == len(info["skipped"]) == len(skip) + 2
    assert "15 skipped" in format_summary(summary)


def test_strict_fails_naming_the_file_and_writes_no_manifest(tmp_path):
    tiny, _, _, _ = make_bad_corpus(tmp_path)
    out = str(tmp_path / "out")
    with pytest.raises(UsageError, match=r"--strict: .*\(and \d+ more\)") as err:
        build_split(tiny.annotations, tiny.images, "train", out, strict=True, progress=False)
    assert "\n" not in str(err.value)
    assert not os.path.exists(os.path.join(out, "dataset.json"))


def test_strict_stops_at_a_corrupt_image_found_while_writing(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=8, seed=4)
    bad = tiny.path_of(1 + 3 * 6)  # 7th image: shard 3 of 4
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    out = str(tmp_path / "out")
    with pytest.raises(
        UsageError, match=r"--strict: 000000000019\.jpg \(image id 19\): .*truncated"
    ):
        build_split(
            tiny.annotations, tiny.images, "train", out, shards=4, strict=True, progress=False
        )
    names = sorted(os.listdir(out))
    assert "dataset.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    # Shards finished before the bad one are complete and are reused once it is fixed.
    assert [n for n in names if n.endswith(".tfrecord")] == [
        shard_name("train", i, 4) for i in range(3)
    ]
    open(bad, "wb").write(data)
    summary = build_split(
        tiny.annotations, tiny.images, "train", out, shards=4, strict=True, progress=False
    )
    assert (summary["shards_reused"], summary["shards_written"]) == (3, 1)
    assert set(read_split(out, "train")) == set(tiny.labels)


def _shard_state(out):
    return {
        n: (os.stat(os.path.join(out, n)).st_mtime_ns, os.stat(os.path.join(out, n)).st_ino)
        for n in os.listdir(out)
        if n.endswith(".tfrecord")
    }


def test_resume_reuses_complete_shards_and_redoes_the_rest(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=10, seed=6)
    out = str(tmp_path / "out")
    build_split(tiny.annotations, tiny.images, "train", out, shards=5, progress=False)
    first = load_manifest(out)["splits"]["train"]
    before = _shard_state(out)
    names = [s["file"] for s in first["shards"]]
    with open(os.path.join(out, names[1]), "ab") as f:  # corrupted
        f.write(b"junk")
    os.remove(os.path.join(out, names[2]))  # lost
    with open(os.path.join(out, names[3] + ".tmp"), "wb") as f:  # interrupted write
        f.write(b"partial")
    os.remove(os.path.join(out, "dataset.json"))

    summary = build_split(tiny.annotations, tiny.images, "train", out, shards=5, progress=False)
    assert (summary["shards_reused"], summary["shards_written"]) == (3, 2)
    after = _shard_state(out)
    for i in (0, 3, 4):
        assert after[names[i]] == before[names[i]], "a reused shard was rewritten"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    second = load_manifest(out)["splits"]["train"]
    assert second["shards"] == first["shards"]  # rewritten shards are byte-identical
    for shard in second["shards"]:
        assert file_sha256(os.path.join(out, shard["file"])) == shard["sha256"]
    assert set(read_split(out, "train")) == set(tiny.labels)

    # A changed plan (here --max-side) invalidates every shard.
    summary = build_split(
        tiny.annotations, tiny.images, "train", out, shards=5, max_side=16, progress=False
    )
    assert (summary["shards_reused"], summary["shards_written"]) == (0, 5)
    # A different shard count replaces the old files.
    build_split(tiny.annotations, tiny.images, "train", out, shards=2, progress=False)
    assert sorted(n for n in os.listdir(out) if "train" in n) == sorted(
        [shard_name("train", i, 2) for i in range(2)]
        + [f".train-{i:05d}-of-00002.done.json" for i in range(2)]
    )


@pytest.mark.slow
def test_resume_after_the_build_process_is_killed(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=12, seed=7)
    out = str(tmp_path / "out")
    script = textwrap.dedent(
        f"""
        import os
        import kerasmlic.data.build as build
        import kerasmlic.data.shard_writer as shard_writer
        real, count = shard_writer.prepare_image, [0]
        def dying(*args, **kwargs):
            count[0] += 1
            if count[0] == 12:  # the last image, prepared while shard 2 is being written
                os._exit(9)
            return real(*args, **kwargs)
        shard_writer.prepare_image = dying
        build.build_split({tiny.annotations!r}, {tiny.images!r}, "train", {out!r},
                          shards=4, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    names = sorted(os.listdir(out))
    assert "dataset.json" not in names
    assert shard_name("train", 2, 4) + ".tmp" in names
    before = _shard_state(out)
    assert sorted(before) == [shard_name("train", i, 4) for i in range(2)]

    summary = build_split(tiny.annotations, tiny.images, "train", out, shards=4, progress=False)
    assert (summary["shards_reused"], summary["shards_written"]) == (2, 2)
    after = _shard_state(out)
    for name, state in before.items():
        assert after[name] == state
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert set(read_split(out, "train")) == set(tiny.labels)
    for shard in load_manifest(out)["splits"]["train"]["shards"]:
        assert file_sha256(os.path.join(out, shard["file"])) == shard["sha256"]


def test_a_killed_worker_fails_the_build_and_a_rerun_resumes(tmp_path, monkeypatch):
    tiny = write_tiny_coco(tmp_path, num_images=24, seed=7)
    out = str(tmp_path / "out")
    # The worker given the last image exits on the spot (as if OOM-killed).
    monkeypatch.setattr(shard_writer, "prepare_chunk", helpers_build.prepare_chunk_or_die)
    monkeypatch.setenv(helpers_build.DIE_ON_ENV, os.path.realpath(tiny.path_of(1 + 3 * 23)))
    monkeypatch.setenv(helpers_build.DIE_AFTER_ENV, os.path.join(out, sidecar_name("train", 0, 4)))
    with pytest.raises(RuntimeError, match="worker process died"):
        build_split(
            tiny.annotations, tiny.images, "train", out, shards=4, workers=2, progress=False
        )
    names = sorted(os.listdir(out))
    assert "dataset.json" not in names and not [n for n in names if n.endswith(".tmp")]
    # Shards are written in order, so the complete ones are a prefix: shard 0
    # (the victim's worker waits for it), and maybe more, depending on which
    # chunk results arrived before the death; never the victim's shard.
    before = _shard_state(out)
    complete = [shard_name("train", i, 4) for i in range(len(before))]
    assert sorted(before) == complete
    first_lost_shard = (23 // CHUNK_SIZE) * CHUNK_SIZE // 6
    assert 1 <= len(complete) <= first_lost_shard

    monkeypatch.undo()
    summary = build_split(tiny.annotations, tiny.images, "train", out, shards=4, progress=False)
    assert (summary["shards_reused"], summary["shards_written"]) == (
        len(complete),
        4 - len(complete),
    )
    after = _shard_state(out)
    for name, state in before.items():
        assert after[name] == state
    assert set(read_split(out, "train")) == set(tiny.labels)


@pytest.mark.parametrize(
    "n, total_bytes, want",
    [
        (1, 10, 1),
        (5, 10**6, 5),
        (12, 10**6, 8),
        (20_000, 10**6, 20),
        (82_081, 13_500 * 10**6, 90),  # COCO train2014: ~150 MB shards
        (40_137, 6_600 * 10**6, 44),
    ],
)
def test_default_shard_count(n, total_bytes, want):
    assert default_num_shards(n, total_bytes) == want


def test_usage_errors(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=2, seed=8)
    out = str(tmp_path / "out")
    with pytest.raises(UsageError, match="images folder .* not found"):
        build_split(tiny.annotations, str(tmp_path / "nope"), "train", out, progress=False)
    with pytest.raises(UsageError, match="annotations file .* not found"):
        build_split(str(tmp_path / "x.json"), tiny.images, "train", out, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(UsageError, match="not a COCO instances file"):
        build_split(str(bad), tiny.images, "train", out, progress=False)
    with pytest.raises(UsageError, match="split name"):
        build_split(tiny.annotations, tiny.images, "../x", out, progress=False)
    with pytest.raises(UsageError, match="--shards"):
        build_split(tiny.annotations, tiny.images, "train", out, shards=0, progress=False)
    tiny.dataset["annotations"] = []
    tiny.save()
    with pytest.raises(UsageError, match="no image .* can be written"):
        build_split(tiny.annotations, tiny.images, "train", out, progress=False)
    assert not os.path.exists(out)


def test_an_id_beyond_int64_stops_the_build_before_any_shard(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=6, seed=9)
    last = tiny.dataset["images"][-1]
    old_id, last["id"] = last["id"], 2**64 + 5
    for ann in tiny.dataset["annotations"]:
        if ann["image_id"] == old_id:
            ann["image_id"] = last["id"]
    tiny.save()
    out = str(tmp_path / "out")
    with pytest.raises(UsageError, match=r"images\[5\]\.id 18446744073709551621 .*64-bit"):
        build_split(tiny.annotations, tiny.images, "train", out, shards=3, progress=False)
    assert not os.path.exists(out)  # nothing written, not even shard 0


def test_unused_categories_repeated_files_and_exif_are_recorded(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=6, seed=10, num_classes=3)
    ds = tiny.dataset
    ds["categories"].append({"id": 77, "name": "unicorn", "supercategory": "myth"})
    # Image 4 (id 10) reuses image 1's file under its own id.
    ds["images"][3]["file_name"] = ds["images"][0]["file_name"]
    # Image 2's file carries an EXIF rotation of 90 degrees.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tiny.path_of(ds["images"][1]["id"])
    Image.open(path).save(path, format="JPEG", exif=exif.tobytes())
    tiny.save()
    out = str(tmp_path / "out")
    warnings = []
    summary = build_split(
        tiny.annotations, tiny.images, "train", out, progress=False, warn=warnings.append
    )
    info = load_manifest(out)["splits"]["train"]
    assert info["unused_classes"] == [{"index": 3, "coco_id": 77, "name": "unicorn"}]
    assert len(warnings) == 1 and "1 of 4 categories" in warnings[0] and "'unicorn'" in warnings[0]
    assert info["repeated_files"] == [
        {"file": ds["images"][0]["file_name"], "image_ids": [ds["images"][0]["id"], 10]}
    ]
    assert info["exif_orientation"] == [
        {"file": ds["images"][1]["file_name"], "image_id": ds["images"][1]["id"], "orientation": 6}
    ]
    line = format_summary(summary)
    assert "1 file names used by several image ids" in line
    assert "1 with an EXIF rotation" in line
    # A rerun reuses every shard and records the same lists.
    again = build_split(
        tiny.annotations, tiny.images, "train", out, progress=False, warn=warnings.append
    )
    assert again["shards_written"] == 0
    assert load_manifest(out)["splits"]["train"] == info


def test_nothing_to_write_names_the_first_file_and_the_path_tried(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=3, seed=11)
    for img in tiny.dataset["images"]:
        os.remove(tiny.path_of(img["id"]))
    out = str(tmp_path / "out")
    first = tiny.dataset["images"][0]["file_name"]
    tried = os.path.join(os.path.realpath(tiny.images), first)
    with pytest.raises(UsageError) as err:
        build_split(tiny.annotations, tiny.images, "train", out, progress=False)
    message = str(err.value)
    assert f"first: {first} (image id 1), tried {tried!r}: missing file" in message
    assert "3 skipped" in message and "\n" not in message

    # Files that exist but none decodes: found while writing, named with the path.
    tiny = write_tiny_coco(tmp_path / "b", num_images=2, seed=12)
    for img in tiny.dataset["images"]:
        with open(tiny.path_of(img["id"]), "wb") as f:
            f.write(b"not an image" * 10)
    first = tiny.dataset["images"][0]["file_name"]
    tried = os.path.join(os.path.realpath(tiny.images), first)
    with pytest.raises(UsageError, match=rf"first: {first}, tried {tried!r}: not a readable"):
        build_split(tiny.annotations, tiny.images, "train", str(tmp_path / "o2"), progress=False)

    # Only unlabelled images: the first is named, with the way to keep them.
    tiny = write_tiny_coco(tmp_path / "c", num_images=0, num_empty=2, seed=13)
    with pytest.raises(UsageError, match=r"all without labels; first: 000000000001\.jpg .*--keep"):
        build_split(tiny.annotations, tiny.images, "train", str(tmp_path / "o3"), progress=False)
