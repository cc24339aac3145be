"""A contact sheet: sample images in a grid, each with its label names below it."""

import os
import tempfile

from PIL import Image, ImageDraw, ImageFont

_BG = (250, 250, 250)
_INK = (20, 20, 20)
_MUTED = (110, 110, 110)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font.
        return ImageFont.load_default()


def _fit(text, font, width, draw):
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def write_contact_sheet(path, samples, *, legend=None, columns=6, cell=192, title=None):
    """Write a PNG grid of images, each with its label lines and a caption below it.

    Args:
        path: Destination ``.png``; written to a temporary file, then renamed.
        samples: ``[(PIL image, [label line, ...], caption), ...]``.
        legend: Optional ``[(PIL image, name), ...]`` drawn as a second grid
            under the samples (here: how each category looks).
        columns: Images per row.
        cell: Displayed image side in pixels; small images are enlarged by an
            integer factor (nearest neighbour, so their pixels stay honest).
        title: Optional heading.

    Returns:
        The path written.
    """
    font = _font(13)
    small = _font(11)
    head = _font(16)
    pad, line_h = 10, 16
    max_lines = max([len(lines) for _, lines, _ in samples] + [1])
    cell_h = cell + 6 + line_h * (max_lines + 1) + pad
    rows = -(-len(samples) // columns) if samples else 0
    width = pad + columns * (cell + pad)
    title = title or "kerasmlic synth: sample train images and their labels"
    top = pad + 24
    height = top + rows * cell_h
    legend_cols, sw, legend_w = 10, 40, (width - pad) // 10
    legend_h = 0
    if legend:
        legend_rows = -(-len(legend) // legend_cols)
        legend_h = 30 + legend_rows * (sw + 6 + 2 * 13 + 6)
    sheet = Image.new("RGB", (width, height + legend_h + pad), _BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill=_INK, font=head)
    for k, (image, lines, caption) in enumerate(samples):
        r, c = divmod(k, columns)
        x, y = pad + c * (cell + pad), top + r * cell_h
        w, h = image.size
        scale = cell / max(w, h)
        if scale >= 1:
            scale = max(int(scale), 1)
            shown = image.resize((w * scale, h * scale), Image.NEAREST)
        else:
            shown = image.resize((max(int(w * scale), 1), max(int(h * scale), 1)), Image.LANCZOS)
        sheet.paste(shown, (x, y))
        ty = y + shown.size[1] + 4
        for line in lines:
            draw.text((x, ty), _fit(line, font, cell, draw), fill=_INK, font=font)
            ty += line_h
        if caption:
            draw.text((x, ty), _fit(f"[{caption}]", small, cell, draw), fill=_MUTED, font=small)
    if legend:
        y0 = height + 4
        draw.text((pad, y0), "How each category is drawn", fill=_INK, font=head)
        y0 += 26
        for k, (image, name) in enumerate(legend):
            r, c = divmod(k, legend_cols)
            x, y = pad + c * legend_w, y0 + r * (sw + 6 + 2 * 13 + 6)
            sheet.paste(image.resize((sw, sw), Image.NEAREST), (x, y))
            words, lines = name.split(), []
            for word in words:  # at most two short lines under a swatch
                if lines and draw.textlength(lines[-1] + " " + word, font=small) <= legend_w - 4:
                    lines[-1] += " " + word
                else:
                    lines.append(word)
            for j, line in enumerate(lines[:2]):
                draw.text(
                    (x, y + sw + 3 + 13 * j),
                    _fit(line, small, legend_w - 4, draw),
                    fill=_INK,
                    font=small,
                )
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        sheet.save(tmp, format="PNG")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it owner-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
