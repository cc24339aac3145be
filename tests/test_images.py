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


def _tf_pixels(data):
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def _animated(fmt):
    frames = [_rgb(seed=1), _rgb(seed=2)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def _palette_bmp():
    img = _rgb(12, 10).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(img, "BMP")


# (name, bytes, stored byte for byte?) — every kind the build meets.
KINDS = [
    ("jpeg_rgb", lambda: _encode(_rgb()), True),
    ("jpeg_gray", lambda: _encode(_rgb().convert("L")), True),
    ("jpeg_cmyk", lambda: _encode(_rgb().convert("CMYK")), True),
    ("jpeg_progressive", lambda: _encode(_rgb(), progressive=True), True),
    ("png_rgb", lambda: _encode(_rgb(), "PNG"), True),
    ("png_alpha", lambda: _encode(_rgb().convert("RGBA"), "PNG"), True),
    ("png_gray", lambda: _encode(_rgb().convert("L"), "PNG"), True),
    ("png_palette", lambda: _encode(_rgb().convert("P"), "PNG"), True),
    ("png_16bit", lambda: _encode(Image.fromarray(np.full((6, 5), 40000, np.uint16)), "PNG"), True),
    ("gif", lambda: _encode(_rgb().convert("P"), "GIF"), True),
    ("webp", lambda: _encode(_rgb(), "WEBP", lossless=True), True),
    ("bmp_rgb", lambda: _encode(_rgb(), "BMP"), True),
    ("bmp_gray", lambda: _encode(_rgb().convert("L"), "BMP"), True),
    ("bmp_palette", _palette_bmp, False),
    ("bmp_1bit", lambda: _encode(_rgb().convert("1"), "BMP"), False),
    ("tiff", lambda: _encode(_rgb(), "TIFF"), False),
    ("webp_animated", lambda: _animated("WEBP"), False),
    ("gif_animated", lambda: _animated("GIF"), True),
]


@pytest.mark.parametrize("name, make, kept", KINDS, ids=[k[0] for k in KINDS])
def test_files_tensorflow_decodes_are_stored_byte_for_byte_the_rest_as_lossless_png(
    name, make, kept
):
    data = make()
    out = prepare_image_bytes(data)
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if kept:
        assert out.encoded == data and out.reencoded is None
        if name.startswith(("png", "gif", "webp", "bmp")) and name != "png_16bit":
            # TensorFlow reads these lossless formats to PIL's pixels exactly.
            np.testing.assert_array_equal(_tf_pixels(data), want)
    else:
        assert out.reencoded == "converted"
        assert _decoded(out.encoded)[0] == "PNG"
        # Lossless: TensorFlow reads the PNG to exactly PIL's pixels of the source.
        np.testing.assert_array_equal(_tf_pixels(out.encoded), want)
    assert (out.height, out.width) == want.shape[:2]


def test_tensorflow_misreads_a_palette_bmp_which_is_why_it_is_converted():
    data = _palette_bmp()
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(_tf_pixels(data).astype(int) - want).max() > 50


def test_png_behind_jpg_name_is_stored_as_is(tmp_path):
    path = tmp_path / "fake.jpg"
    data = _encode(_rgb(), "PNG")
    path.write_bytes(data)
    out = prepare_image(str(path))
    assert out.encoded == data and out.reencoded is None and out.source_format == "PNG"


def test_exif_orientation_is_reported_not_applied():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_rgb(40, 30), exif=exif.tobytes())
    out = prepare_image_bytes(data, declared_size=(30, 40))  # declared as displayed: swapped
    assert out.orientation == 6 and out.encoded == data and (out.width, out.height) == (40, 30)
    assert prepare_image_bytes(_encode(_rgb())).orientation == 1


def test_max_side_drops_alpha_as_tensorflow_does():
    rgba = Image.new("RGBA", (40, 20), (10, 200, 30, 0))
    out = prepare_image_bytes(_encode(rgba, "PNG"), max_side=20)
    assert out.reencoded == "max_side"
    pixels = np.asarray(Image.open(io.BytesIO(out.encoded)), np.int32)
    assert np.abs(pixels - [10, 200, 30]).max() <= 3  # the colour, not white


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
