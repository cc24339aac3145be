"""COCO annotations: validation, sparse id mapping, per-image label aggregation."""

import json

import pytest
from helpers_data import write_tiny_coco

from kerasmlic.data.coco import labels_from_dataset, load_coco
from kerasmlic.errors import UsageError


def _dataset(**overrides):
    data = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 50},
            {"id": 3, "file_name": "b.jpg", "width": 20, "height": 20},
            {"id": 7, "file_name": "c.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 90, "area": 500.0, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "area": 100.0, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 90, "area": 250.0, "iscrowd": 1},
            {"id": 4, "image_id": 3, "category_id": 5, "bbox": [0, 0, 4, 5], "iscrowd": 1},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 5, "name": "airplane", "supercategory": "vehicle"},
        ],
    }
    data.update(overrides)
    return data


def _by_id(labels):
    return {img.image_id: img for img in labels.images}


def test_sparse_category_ids_map_to_contiguous_indices_in_id_order():
    labels = labels_from_dataset(_dataset())
    assert labels.classes == [
        {"index": 0, "coco_id": 1, "name": "person", "supercategory": "person"},
        {"index": 1, "coco_id": 5, "name": "airplane", "supercategory": "vehicle"},
        {"index": 2, "coco_id": 90, "name": "toothbrush", "supercategory": "indoor"},
    ]
    assert labels.coco_id_to_index == {1: 0, 5: 1, 90: 2}


def test_labels_are_aggregated_per_image_with_crowd_counted():
    labels = labels_from_dataset(_dataset())
    assert [img.image_id for img in labels.images] == [3, 7, 10]
    a = _by_id(labels)[10]
    # person: one 100 px instance; toothbrush: 500 + 250 (crowd) px, 2 instances.
    assert a.label_ids == [0, 2]
    assert a.label_areas == pytest.approx([100 / 5000, 750 / 5000])
    assert a.label_instances == [1, 2]
    # A crowd-only image is labelled; a missing area falls back to the bbox.
    b = _by_id(labels)[3]
    assert (b.label_ids, b.label_instances) == ([1], [1])
    assert b.label_areas == pytest.approx([20 / 400])
    c = _by_id(labels)[7]
    assert (c.label_ids, c.label_areas, c.label_instances) == ([], [], [])
    assert labels.skipped == []


def test_pycocotools_index_is_built_quietly(capsys):
    labels = labels_from_dataset(_dataset())
    assert capsys.readouterr().out == ""
    assert sorted(labels.coco.getCatIds()) == [1, 5, 90]
    assert len(labels.coco.getAnnIds(imgIds=[10])) == 3


def test_duplicate_image_id_keeps_the_first_entry():
    data = _dataset()
    data["images"].append({"id": 10, "file_name": "dup.jpg", "width": 100, "height": 50})
    labels = labels_from_dataset(data, "ann.json")
    assert _by_id(labels)[10].file_name == "a.jpg"
    assert len(labels.images) == 3
    [skip] = labels.skipped
    assert skip["file"] == "dup.jpg" and skip["image_id"] == 10
    assert "duplicate image id 10" in skip["reason"]


def test_annotation_on_unknown_image_and_unknown_category_are_skipped():
    data = _dataset()
    data["annotations"] += [
        {"id": 50, "image_id": 999, "category_id": 1, "area": 4.0},
        {"id": 51, "image_id": 3, "category_id": 77, "area": 4.0},
    ]
    labels = labels_from_dataset(data, "ann.json")
    reasons = {s["annotation_id"]: s for s in labels.skipped}
    assert set(reasons) == {50, 51}
    assert reasons[50]["file"] == "ann.json" and reasons[50]["image_id"] == 999
    assert "not in 'images'" in reasons[50]["reason"]
    assert "unknown category id 77" in reasons[51]["reason"]
    # Image 3 keeps its valid label; nothing else changed.
    assert _by_id(labels)[3].label_ids == [1]
    assert _by_id(labels)[10].label_ids == [0, 2]


def test_tiny_coco_file_round_trips(tmp_path):
    tiny = write_tiny_coco(tmp_path, num_images=6, seed=3, category_ids=[1, 5, 90], num_empty=2)
    labels = load_coco(tiny.annotations)
    index = labels.coco_id_to_index
    assert index == {1: 0, 5: 1, 90: 2}
    assert len(labels.images) == 8
    for img in labels.images:
        want = tiny.labels[img.image_id]
        assert img.label_ids == sorted(index[c] for c in want)
        assert img.label_areas == pytest.approx([tiny.areas[img.image_id][c] for c in want])
        assert img.label_instances == [tiny.instances[img.image_id][c] for c in want]
    assert sum(1 for img in labels.images if not img.label_ids) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json {", "not valid JSON"),
        ("[1, 2]", "top level is a list"),
        (json.dumps({"images": [], "annotations": []}), "no 'categories'"),
        (json.dumps(_dataset(images={})), "'images' is a dict"),
        (json.dumps(_dataset(categories=[])), "'categories' is empty"),
        (
            json.dumps(_dataset(images=[{"id": "7", "file_name": "a.jpg"}])),
            r"images\[0\].id must be an integer",
        ),
        (json.dumps(_dataset(images=[{"id": 7}])), r"images\[0\].file_name"),
        (
            json.dumps(_dataset(images=[{"id": 7, "file_name": "a.jpg", "width": "big"}])),
            r"images\[0\].width must be a number",
        ),
        (
            json.dumps(_dataset(annotations=[{"image_id": 1, "category_id": "cat"}])),
            r"annotations\[0\].category_id must be an integer",
        ),
        (
            json.dumps(_dataset(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])),
            "category id 1 appears twice",
        ),
        (json.dumps(_dataset(categories=[{"id": 1}])), r"categories\[0\].name"),
    ],
)
def test_malformed_annotations_are_one_clear_usage_error(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as err:
        load_coco(str(path))
    assert "\n" not in str(err.value)


def test_missing_annotations_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_coco(str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    "where, value",
    [("image", 2**63), ("image", -(2**63) - 1), ("annotation", 2**64), ("category", 2**70)],
)
def test_ids_outside_int64_are_refused(where, value):
    data = _dataset()
    if where == "image":
        data["images"][1]["id"] = value
        match = rf"images\[1\]\.id {value} \('b\.jpg'\) is outside the 64-bit"
    elif where == "annotation":
        data["annotations"][0]["image_id"] = value
        match = rf"annotations\[0\]\.image_id {value} is outside"
    else:
        data["categories"][0]["id"] = value
        match = rf"categories\[0\]\.id {value} is outside"
    with pytest.raises(UsageError, match=match) as err:
        labels_from_dataset(data)
    assert "\n" not in str(err.value)
    data = _dataset()
    data["images"][1]["id"] = 2**63 - 1  # the largest int64 is fine
    data["annotations"][3]["image_id"] = 2**63 - 1
    assert (2**63 - 1) in _by_id(labels_from_dataset(data))
