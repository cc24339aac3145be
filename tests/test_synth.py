"""Tests for the built-in synthetic COCO-format dataset (kerasmlic.data.synth)."""

import contextlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from sklearn.metrics import average_precision_score

from kerasmlic.categories import COCO_CATEGORIES, coco_categories_json
from kerasmlic.data import synth
from kerasmlic.data.synth import dataset as synth_dataset
from kerasmlic.errors import UsageError

CAT_INDEX = {cid: i for i, (cid, _, _) in enumerate(COCO_CATEGORIES)}


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def _quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _label_matrix(coco_json):
    images = sorted(coco_json["images"], key=lambda m: m["id"])
    row = {m["id"]: k for k, m in enumerate(images)}
    y = np.zeros((len(images), 80), bool)
    for a in coco_json["annotations"]:
        y[row[a["image_id"]], CAT_INDEX[a["category_id"]]] = True
    return images, y


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synth.synthesize(out, train=30, val=10, image_size=48, seed=7, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    """600 images at 32 px: enough for label statistics, still about 3 s."""
    out = tmp_path_factory.mktemp("synth_stats") / "ds"
    synth.synthesize(
        out, train=600, val=0, image_size=32, seed=1, contact_sheet=False, progress=False
    )
    return out


def test_layout_ids_and_sizes(small):
    out, summary = small
    assert sorted(os.listdir(out)) == ["annotations", "contact_sheet.png", "train", "val"]
    seen_images, seen_anns = set(), set()
    for split, n in (("train", 30), ("val", 10)):
        coco = _load(out / "annotations" / f"instances_{split}.json")
        assert set(coco) == {"info", "licenses", "images", "annotations", "categories"}
        assert coco["categories"] == coco_categories_json()
        assert len(coco["images"]) == n
        names = sorted(os.listdir(out / split))
        assert names == sorted(m["file_name"] for m in coco["images"])
        for m in coco["images"]:
            assert re.fullmatch(r"\d{12}\.jpg", m["file_name"])
            assert int(m["file_name"][:12]) == m["id"]
            assert (m["height"], m["width"]) == (48, 48)
            with Image.open(out / split / m["file_name"]) as im:
                assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
        ids = {m["id"] for m in coco["images"]}
        ann_ids = {a["id"] for a in coco["annotations"]}
        assert not ids & seen_images and not ann_ids & seen_anns
        seen_images |= ids
        seen_anns |= ann_ids
        s = summary["splits"][split]
        assert s["images"] == n and s["annotations"] == len(coco["annotations"])
        assert s["annotations_file"] == str(out / "annotations" / f"instances_{split}.json")
        _, y = _label_matrix(coco)
        assert s["mean_labels_per_image"] == pytest.approx(y.sum(1).mean())
    assert seen_images == set(range(1, 41))
    # Renamed temp files get ordinary permissions, like the images beside them.
    jpg_mode = os.stat(out / "train" / "000000000001.jpg").st_mode & 0o777
    for p in ("annotations/instances_train.json", "contact_sheet.png"):
        assert os.stat(out / p).st_mode & 0o777 == jpg_mode
    assert summary["elapsed_s"] > 0 and summary["elapsed"] == summary["elapsed_s"]
    assert (summary["num_train"], summary["num_val"]) == (30, 10)
    assert summary["mean_labels_val"] == summary["splits"]["val"]["mean_labels_per_image"]


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    kw = dict(train=8, val=4, image_size=40, progress=False)
    synth.synthesize(tmp_path / "a", seed=3, **kw)
    synth.synthesize(tmp_path / "b", seed=3, **kw)
    synth.synthesize(tmp_path / "c", seed=4, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 8 + 4 + 2 + 1
    assert a == b
    assert a.keys() == c.keys()
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != c[k] for k in jpgs) == len(jpgs)


def test_val_images_do_not_depend_on_train_count(tmp_path):
    synth.synthesize(tmp_path / "a", train=2, val=3, seed=5, contact_sheet=False, progress=False)
    synth.synthesize(tmp_path / "b", train=5, val=3, seed=5, contact_sheet=False, progress=False)
    va = [v for _, v in sorted(_files(tmp_path / "a" / "val").items())]
    vb = [v for _, v in sorted(_files(tmp_path / "b" / "val").items())]
    assert va == vb
    assert sorted(os.listdir(tmp_path / "b" / "val"))[0] == "000000000006.jpg"


def test_pycocotools_loads_and_annotations_are_consistent(small, stats):
    crowd_seen = 0
    for path in [
        small[0] / "annotations" / "instances_train.json",
        small[0] / "annotations" / "instances_val.json",
        stats / "annotations" / "instances_train.json",
    ]:
        coco = _quiet_coco(path)
        assert len(coco.getCatIds()) == 80
        size = coco.imgs[coco.getImgIds()[0]]["width"]
        for ann in coco.dataset["annotations"]:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= size and y + h <= size
            assert 0 < ann["area"] <= w * h
            assert ann["iscrowd"] in (0, 1)
            m = coco.annToMask(ann)
            if ann["iscrowd"]:
                crowd_seen += 1
                # Crowd masks are the visible pixels exactly, as RLE.
                assert m.sum() == ann["area"]
                ys, xs = np.nonzero(m)
                assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == [
                    x,
                    y,
                    w,
                    h,
                ]
            else:
                for poly in ann["segmentation"]:
                    assert len(poly) >= 6 and min(poly) >= 0 and max(poly) <= size
                # Polygons outline the whole object; the area counts what is
                # left visible, so it cannot exceed the outline (plus edge pixels).
                assert ann["area"] <= m.sum() + 2 * (w + h)
    assert crowd_seen >= 5


def test_label_statistics_look_like_coco(stats):
    coco = _load(stats / "annotations" / "instances_train.json")
    images, y = _label_matrix(coco)
    counts = y.sum(1)
    assert 2.6 <= counts.mean() <= 3.2
    freq = y.mean(0)
    assert 0.35 <= freq[0] <= 0.55  # person
    # Long tail: one very common class, most classes rare.
    assert np.median(freq) < 0.05 and freq.max() == freq[0]
    assert (counts == 0).mean() < 0.05
    assert sum(a["iscrowd"] for a in coco["annotations"]) > 0
    # Several instances of one class in an image happen.
    per = {}
    for a in coco["annotations"]:
        key = (a["image_id"], a["category_id"])
        per[key] = per.get(key, 0) + 1
    assert max(per.values()) >= 3
    # Co-occurrence: P(b | a) is much higher when a and b share a scene.
    share = np.zeros((80, 80), bool)
    for cats in synth.scene_categories().values():
        share[np.ix_(cats, cats)] = True
    co = y.T.astype(float) @ y
    cond = co / np.maximum(np.diag(co)[:, None], 1)
    pairs = ~np.eye(80, dtype=bool)
    pairs[0, :] = pairs[:, 0] = False  # person goes with every scene
    within, across = cond[share & pairs].mean(), cond[~share & pairs].mean()
    assert within > 5 * across, (within, across)
    assert {m["scene"] for m in images} == set(synth.scene_categories())


def test_colour_histograms_predict_labels_far_above_chance(stats):
    """A linear model on colour histograms must beat the label base rate (not noise)."""
    coco = _load(stats / "annotations" / "instances_train.json")
    images, y = _label_matrix(coco)
    feats = []
    for m in images:
        a = np.asarray(Image.open(stats / "train" / m["file_name"]).convert("RGB")) // 64
        h = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64)
        feats.append(np.sqrt(h / h.sum()))
    x = np.hstack([np.asarray(feats), np.ones((len(feats), 1))])
    tr, te = slice(0, 450), slice(450, None)
    w = np.linalg.solve(x[tr].T @ x[tr] + 1e-2 * np.eye(x.shape[1]), x[tr].T @ y[tr])
    scores = x[te] @ w
    classes = [c for c in range(80) if y[tr, c].sum() >= 10 and y[te, c].sum() >= 3]
    assert len(classes) >= 20
    m_ap = np.mean([average_precision_score(y[te, c], scores[:, c]) for c in classes])
    base = y[te][:, classes].mean()
    assert m_ap > 0.25 and m_ap > 3 * base, (m_ap, base)


def _square(cat, cx, size, group):
    return synth.Instance(cat, cx, 20, size, outline=False, group=group)


def test_occluded_objects_lose_their_label():
    squares = [i for i in range(80) if synth.category_look(i)[0] == "square"]
    a_cat, b_cat = squares[:2]
    groups = [(a_cat, 0), (b_cat, 0)]
    bg = np.full((64, 64, 3), 100, np.float32)
    # A alone: the square spans x, y in [16, 24): 8 x 8 pixels.
    _, objs = synth.render([_square(a_cat, 20, 10, 0)], groups[:1], 64, bg)
    assert [(o["area"], o["bbox"]) for o in objs] == [(64.0, [16.0, 16.0, 8.0, 8.0])]
    # B drawn on top covering half of A: A keeps 4 columns (32 px) and its label.
    _, objs = synth.render([_square(a_cat, 20, 10, 0), _square(b_cat, 24, 10, 1)], groups, 64, bg)
    assert [(o["category"], o["area"], o["bbox"]) for o in objs] == [
        (a_cat, 32.0, [16.0, 16.0, 4.0, 8.0]),
        (b_cat, 64.0, [20.0, 16.0, 8.0, 8.0]),
    ]
    # B covering 6 of A's 8 columns: 25 % (16 px) visible, above the 20 % bar.
    _, objs = synth.render([_square(a_cat, 20, 10, 0), _square(b_cat, 22, 10, 1)], groups, 64, bg)
    assert [(o["category"], o["area"]) for o in objs] == [(a_cat, 16.0), (b_cat, 64.0)]
    # B covering 7 of A's 8 columns: 12.5 % visible, below the 20 % bar.
    _, objs = synth.render([_square(a_cat, 20, 10, 0), _square(b_cat, 21.2, 10, 1)], groups, 64, bg)
    assert [o["category"] for o in objs] == [b_cat]
    # B entirely over A.
    _, objs = synth.render([_square(a_cat, 20, 10, 0), _square(b_cat, 20, 20, 1)], groups, 64, bg)
    assert [(o["category"], o["area"]) for o in objs] == [(b_cat, 256.0)]
    # The same B drawn first stays behind A: both visible.
    _, objs = synth.render([_square(b_cat, 20, 20, 1), _square(a_cat, 20, 10, 0)], groups, 64, bg)
    assert sorted((o["category"], o["area"]) for o in objs) == [(a_cat, 64.0), (b_cat, 192.0)]


def test_looks_are_distinct_and_survive_a_horizontal_flip():
    looks = [synth.category_look(i)[:2] for i in range(80)]
    assert len(set(looks)) == 80
    assert {s for s, _ in looks} == set(synth.SHAPES)
    bg = np.zeros((48, 48, 3), np.float32)
    masks = {}
    for i in range(10):  # categories 0..9 cover the ten shapes
        inst = synth.Instance(i, 24, 24, 36, outline=False, colour=(255, 255, 255))
        img, _ = synth.render([inst], [(i, 0)], 48, bg)
        m = img[..., 0] > 127
        flipped = m[:, ::-1]
        # Centre of the canvas is at 24 while the mirror axis is 23.5: allow one column.
        iou = (m & flipped).sum() / (m | flipped).sum()
        assert iou > 0.9, (synth.SHAPES[i], iou)
        masks[synth.SHAPES[i]] = m
    names = list(masks)
    for p in range(10):
        for q in range(p + 1, 10):
            a, b = masks[names[p]], masks[names[q]]
            assert (a ^ b).sum() / (a | b).sum() > 0.15, (names[p], names[q])


def test_clip_polygon_to_frame():
    square = [(-5, -5), (5, -5), (5, 5), (-5, 5)]
    assert synth.clip_polygon(square, 10, 10) == [(0, 0), (5, 0), (5, 5), (0, 5)]
    # Triangle poking out of the bottom edge: its tip becomes an edge at y = 10.
    np.testing.assert_allclose(
        synth.clip_polygon([(2, 2), (8, 2), (5, 12)], 10, 10),
        [(4.4, 10.0), (2, 2), (8, 2), (5.6, 10.0)],
    )
    assert synth.clip_polygon([(12, 2), (18, 2), (15, 8)], 10, 10) == []
    inside = [(1, 1), (9, 1), (5, 9)]
    assert synth.clip_polygon(inside, 10, 10) == inside


def test_mask_to_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for first in (False, True):
        m = rng.random((7, 5)) < 0.4
        m[0, 0] = first
        rle = synth.mask_to_rle(m)
        assert sum(rle["counts"]) == 35
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5))
        np.testing.assert_array_equal(decoded.astype(bool), m)


def test_contact_sheet_is_a_readable_png(small):
    out, summary = small
    path = out / "contact_sheet.png"
    assert summary["contact_sheet"] == str(path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        arr = np.asarray(im.convert("RGB"), np.float32)
    # 6 columns of 4x-enlarged 48 px images, 24 samples, and the 80-swatch legend.
    assert 800 <= w <= 2000 and 900 <= h <= 4000
    assert arr.std() > 20
    # The first sample is pasted enlarged 4x with nearest neighbour at (10, 34).
    first = Image.open(out / "train" / "000000000001.jpg").convert("RGB")
    enlarged = np.asarray(first.resize((192, 192), Image.NEAREST), np.float32)
    np.testing.assert_array_equal(arr[34 : 34 + 192, 10 : 10 + 192], enlarged)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 31},
        {"image_size": 1025},
        {"image_size": 64.0},
        {"image_size": True},
        {"train": -1},
        {"val": -5},
        {"train": 0, "val": 0},
        {"seed": -1},
        {"train": "10"},
    ],
)
def test_bad_arguments_raise_usage_error_and_write_nothing(tmp_path, kwargs):
    out = tmp_path / "ds"
    with pytest.raises(UsageError):
        synth.synthesize(out, progress=False, **{"train": 2, "val": 1, **kwargs})
    assert not out.exists()


def test_refuses_foreign_folder_and_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        synth.synthesize(tmp_path, train=1, val=1, progress=False)
    with pytest.raises(UsageError, match="not a folder"):
        synth.synthesize(tmp_path / "notes.txt", train=1, val=1, progress=False)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_rerun_replaces_an_earlier_run(tmp_path):
    synth.synthesize(tmp_path, train=5, val=2, image_size=32, progress=False)
    assert (tmp_path / "contact_sheet.png").exists()
    synth.synthesize(tmp_path, train=3, val=1, image_size=32, contact_sheet=False, progress=False)
    assert not (tmp_path / "contact_sheet.png").exists()  # it showed the old images
    assert len(os.listdir(tmp_path / "train")) == 3
    assert os.listdir(tmp_path / "val") == ["000000000004.jpg"]
    assert len(_load(tmp_path / "annotations" / "instances_val.json")["images"]) == 1


def test_interrupted_run_leaves_no_annotation_file(tmp_path, monkeypatch):
    real = synth.generate_image
    calls = []

    def flaky(rng, size):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(rng, size)

    # Patched where the split writer looks it up.
    monkeypatch.setattr(synth_dataset, "generate_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path, train=6, val=2, image_size=32, progress=False)
    assert os.listdir(tmp_path / "annotations") == []

    def broken_dump(obj, f, **kw):
        f.write('{"images": [')
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        synth.write_compact_json_atomic(str(tmp_path / "annotations" / "x.json"), {"a": 1})
    assert os.listdir(tmp_path / "annotations") == []


def test_test_split_leaves_train_and_val_byte_identical(tmp_path, capsys):
    kw = dict(train=6, val=3, image_size=32, seed=2, progress=False)
    synth.synthesize(tmp_path / "a", **kw)
    summary = synth.synthesize(tmp_path / "b", test=4, **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert {
        k: v for k, v in b.items() if not k.startswith(("test", "annotations/instances_test"))
    } == a
    coco = _load(tmp_path / "b" / "annotations" / "instances_test.json")
    assert [m["id"] for m in coco["images"]] == [10, 11, 12, 13]  # after train and val
    assert sorted(os.listdir(tmp_path / "b" / "test")) == [f"{i:012d}.jpg" for i in range(10, 14)]
    assert summary["num_test"] == 4 and summary["splits"]["test"]["images"] == 4
    # Test images are new draws, not copies of val images.
    val = set(v for k, v in b.items() if k.startswith("val/"))
    assert not val & set(v for k, v in b.items() if k.startswith("test/"))
    # A rerun without --test removes the earlier test split.
    synth.synthesize(tmp_path / "b", **kw)
    assert not (tmp_path / "b" / "test").exists()
    assert not (tmp_path / "b" / "annotations" / "instances_test.json").exists()
    from kerasmlic import cli

    assert cli.main(["synth", str(tmp_path / "c"), "--train", "2", "--val", "1", "--test", "2",
                     "--image-size", "32"]) == 0  # fmt: skip
    assert "2 train + 1 val + 2 test images" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "c" / "test")) == 2
