"""Request bodies for TF Serving's REST API (``POST /v1/models/NAME:predict``).

TF Serving's JSON API takes binary inputs as ``{"b64": "<base64>"}`` objects;
with one input per signature, each instance is that input's value. So a batch
of two JPEGs for ``serving_default`` is::

    {"instances": [{"b64": "/9j/4AAQ..."}, {"b64": "/9j/4AAQ..."}]}

(or, naming the input, ``{"instances": [{"image_bytes": {"b64": "..."}}]}``).
The answer is ``{"predictions": [{"scores": [...], "label_ids": [...],
"labels": [...], "num_labels": n}, ...]}``, one object per image.

Command line: ``python -m kerasmlic.export.rest IMAGE... > request.json``.
"""

import base64
import json
import sys


def request_body(encoded_images, input_name=None):
    """Return the JSON request body for a batch of encoded images.

    Args:
        encoded_images: A list of JPEG/PNG ``bytes``.
        input_name: None for the short form (``{"b64": ...}`` per instance), or
            the signature input name (``"image_bytes"``) for the named form.

    Returns:
        The body as a ``str``.
    """
    instances = []
    for data in encoded_images:
        value = {"b64": base64.b64encode(data).decode("ascii")}
        instances.append(value if input_name is None else {input_name: value})
    return json.dumps({"instances": instances})


def main(argv=None):
    """Print the request body for image files (``python -m kerasmlic.export.rest``).

    Args:
        argv: Image paths (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m kerasmlic.export.rest IMAGE... > request.json", file=sys.stderr)
        return 2
    encoded = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                encoded.append(f.read())
        except OSError as e:
            print(f"{path}: {e.strerror or e}", file=sys.stderr)
            return 2
    print(request_body(encoded))
    return 0


if __name__ == "__main__":
    sys.exit(main())
