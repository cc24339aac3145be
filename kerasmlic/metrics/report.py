"""Plain-text tables of :func:`kerasmlic.metrics.evaluate_predictions` results."""

import math

from kerasmlic.errors import UsageError
from kerasmlic.metrics.multilabel import HEADLINE_KEYS, PER_CLASS_KEYS

_SIX = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def _pct(value, digits):
    """A fraction as a percentage string, ``n/a`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * value:.{digits}f}"


def _check(results, keys):
    if not isinstance(results, dict):
        raise UsageError(f"expected an evaluation result dict, got {type(results).__name__}")
    missing = [k for k in keys if k not in results]
    if missing:
        raise UsageError(f"evaluation result lacks keys: {', '.join(missing)}")


def _grid(header, rows, align):
    """Lay out a table: ``align`` has one ``l`` or ``r`` per column, two spaces apart."""
    table = [header] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_metrics_table(results, digits=1):
    """Headline figures as a small table, in percent.

    Example (``digits=1``)::

        images  40137
        mAP      63.2

        label set    CP    CR   CF1    OP    OR   OF1
        threshold  61.7  65.0  63.3  66.1  69.0  67.5
        top-3      55.0  60.2  57.5  59.8  61.4  60.6

        per image    EP    ER   EF1
        threshold  64.0  68.1  63.9

    Args:
        results: A dict from :func:`evaluate_predictions` (or one loaded from
            its JSON).
        digits: Decimals of the percentages.

    Returns:
        The table as one string (no trailing newline).

    Raises:
        UsageError: if a headline key is missing.
    """
    _check(results, HEADLINE_KEYS)
    lines = [
        f"images  {results['num_images']}",
        f"mAP     {_pct(results['mAP'], digits):>5}",
        "",
    ]
    rows = [
        ["threshold"] + [_pct(results[k], digits) for k in _SIX],
        ["top-3"] + [_pct(results[f"{k}_top3"], digits) for k in _SIX],
    ]
    lines += _grid(["label set", *_SIX], rows, "lrrrrrr")
    lines.append("")
    rows = [["threshold"] + [_pct(results[k], digits) for k in ("EP", "ER", "EF1")]]
    lines += _grid(["per image", "EP", "ER", "EF1"], rows, "lrrr")
    return "\n".join(lines)


def format_per_class(results, top=None, sort_by="AP", digits=1):
    """Per-class figures (AP, P, R, F1 in percent, support) as a table.

    Args:
        results: A dict from :func:`evaluate_predictions`.
        top: If set, keep only the first ``top`` rows after sorting.
        sort_by: ``"index"`` keeps class order; ``"AP"``, ``"P"``, ``"R"``,
            ``"F1"`` or ``"support"`` sort descending (classes without an AP
            last), ties in class order.
        digits: Decimals of the percentages.

    Returns:
        The table as one string (no trailing newline).

    Raises:
        UsageError: if ``per_class`` is missing or ``sort_by``/``top`` is invalid.
    """
    _check(results, ("per_class",))
    if sort_by != "index" and sort_by not in PER_CLASS_KEYS[1:]:
        raise UsageError(f"sort_by must be 'index' or one of {PER_CLASS_KEYS[1:]}, got {sort_by!r}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
        raise UsageError(f"top must be None or an integer >= 0, got {top!r}")
    entries = list(enumerate(results["per_class"]))
    if sort_by != "index":

        def key(item):
            value = item[1][sort_by]
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            return (missing, 0.0 if missing else -value, item[0])

        entries.sort(key=key)
    if top is not None:
        entries = entries[:top]
    rows = [
        [
            str(i),
            str(entry["name"]),
            str(entry["support"]),
            _pct(entry["AP"], digits),
            _pct(entry["P"], digits),
            _pct(entry["R"], digits),
            _pct(entry["F1"], digits),
        ]
        for i, entry in entries
    ]
    header = ["#", "class", "support", "AP", "P", "R", "F1"]
    return "\n".join(_grid(header, rows, "rlrrrrr"))
