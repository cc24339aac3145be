"""Image validation / conversion (kerasmlic.data.images): every policy case."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from kerasmlic.data.images import (
    ImageSkip,
    check_declared_size,
    prepare_image,
    prepare_image_bytes,
    resolve_image_path,
)


def _encode(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30, seed=0):
    # Smooth colour blobs (random 4x3 grid, upsampled): JPEG keeps them well.
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    return grid.resize((w, h), Image.Resampling.BILINEAR)


def _decoded(data):
    img = Image.open(io.BytesIO(data))
    return img.format, img.mode, img.size


def test_valid_rgb_jpeg_passes_through_byte_for_byte():
    data = _encode(_rgb())
    out = prepare_image_bytes(data, declared_size=(40, 30))
    assert out.encoded == data
    assert (out.width, out.height, out.reencoded) == (40, 30, None)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_gray_and_cmyk_jpeg_are_converted_to_rgb(mode):
    src = _rgb().convert(mode)
    data = _encode(src)
    assert _decoded(data)[1] == mode
    out = prepare_image_bytes(data)
    assert out.reencoded == "mode"
    assert _decoded(out.encoded) == ("JPEG", "RGB", (40, 30))
    # Same picture: compare against PIL's own RGB conversion of the source.
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    got = np.asarray(Image.open(io.BytesIO(out.encoded)), np.float32)
    assert np.abs(got - want).mean() < 6.0


def test_png_behind_jpg_name_is_converted(tmp_path):
    path = tmp_path / "fake.jpg"
    path.write_bytes(_encode(_rgb(), "PNG"))
    out = prepare_image(str(path))
    assert out.reencoded == "format"
    assert _decoded(out.encoded) == ("JPEG", "RGB", (40, 30))


def test_transparent_png_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = prepare_image_bytes(_encode(rgba, "PNG"))
    pixels = np.asarray(Image.open(io.BytesIO(out.encoded)))
    assert pixels.min() >= 250


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    out = prepare_image_bytes(_encode(Image.fromarray(arr), "PNG"))
    pixels = np.asarray(Image.open(io.BytesIO(out.encoded)))[..., 0]
    assert pixels.max() >= 250 and pixels.min() <= 5


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all" * 10, "not a readable image"),
    ],
)
def test_unreadable_bytes_are_skipped(data, reason):
    with pytest.raises(ImageSkip, match=reason):
        prepare_image_bytes(data)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_jpeg_is_skipped(keep):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise))
    with pytest.raises(ImageSkip, match="corrupt or truncated JPEG"):
        prepare_image_bytes(data[: int(len(data) * keep)])
    # Cut inside the header.
    with pytest.raises(ImageSkip, match="corrupt or truncated JPEG"):
        prepare_image_bytes(data[:100])


def test_corrupt_png_is_named_as_such():
    data = _encode(_rgb(), "PNG")
    with pytest.raises(ImageSkip, match="corrupt or truncated PNG"):
        prepare_image_bytes(data[:60])


def test_missing_file_and_folder_are_skipped(tmp_path):
    with pytest.raises(ImageSkip, match="missing file"):
        prepare_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageSkip, match="folder"):
        prepare_image(str(tmp_path))


def test_absurd_real_size_is_skipped():
    data = _encode(Image.new("L", (20001, 2)))
    with pytest.raises(ImageSkip, match="20001x2"):
        prepare_image_bytes(data)


@pytest.mark.parametrize("w, h", [(0, 10), (10, 0), (20001, 10), (-5, 10)])
def test_absurd_declared_size_is_refused(w, h):
    with pytest.raises(ImageSkip, match="out of range"):
        check_declared_size(w, h)
    check_declared_size(640, 480)
    check_declared_size(None, None)


def test_declared_size_check_accepts_rescale_and_swap_but_not_other_aspect():
    data = _encode(_rgb(40, 30))
    prepare_image_bytes(data, declared_size=(640, 480))  # uniform 16x rescale
    prepare_image_bytes(data, declared_size=(300, 400))  # width/height swapped
    prepare_image_bytes(data, declared_size=(44, 30))  # aspect off by 10%
    with pytest.raises(ImageSkip, match="disagrees"):
        prepare_image_bytes(data, declared_size=(40, 80))


def test_max_side_downscales_keeping_aspect():
    data = _encode(_rgb(64, 32))
    out = prepare_image_bytes(data, max_side=16)
    assert (out.width, out.height, out.reencoded) == (16, 8, "max_side")
    assert _decoded(out.encoded) == ("JPEG", "RGB", (16, 8))
    # Odd sizes round; a small image is left alone.
    out = prepare_image_bytes(_encode(_rgb(50, 30)), max_side=20)
    assert (out.width, out.height) == (20, 12)
    small = _encode(_rgb(10, 8))
    assert prepare_image_bytes(small, max_side=16).encoded == small


def test_max_side_on_a_cmyk_jpeg_gives_rgb():
    out = prepare_image_bytes(_encode(_rgb(64, 48).convert("CMYK")), max_side=32)
    assert _decoded(out.encoded) == ("JPEG", "RGB", (32, 24))


def test_resolve_image_path_refuses_escapes(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    os.symlink(root / "sub" / "a.jpg", root / "inner_link.jpg")
    real = os.path.realpath(root)
    assert resolve_image_path(real, "sub/a.jpg") == os.path.join(real, "sub", "a.jpg")
    assert resolve_image_path(real, "sub/../sub/a.jpg") == os.path.join(real, "sub", "a.jpg")
    assert resolve_image_path(real, "inner_link.jpg") == os.path.join(real, "sub", "a.jpg")
    for name, reason in [
        (str(tmp_path / "secret.jpg"), "absolute"),
        ("../secret.jpg", "outside"),
        ("sub/../../secret.jpg", "outside"),
        ("link.jpg", "outside"),
        (".", "outside"),
        ("a\0.jpg", "NUL"),
    ]:
        with pytest.raises(ImageSkip, match=reason):
            resolve_image_path(real, name)
