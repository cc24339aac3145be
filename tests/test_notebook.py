"""experiments/quickstart.ipynb runs top to bottom (nbclient + ipykernel), at tiny settings.

The kernel is this interpreter, through a kernelspec written to a temporary
``JUPYTER_PATH``, so nothing has to be registered beforehand. The
notebook's parameters come from ``KERASMLIC_NB_*`` environment variables,
which the kernel inherits.
"""

import json
import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "quickstart.ipynb")
KERNEL = "kerasmlic-test"
TINY = {
    "TRAIN_IMAGES": "24",
    "VAL_IMAGES": "12",
    "IMAGE_SIZE": "32",
    "EPOCHS": "2",
    "BATCH_SIZE": "8",
    "MODEL": "seq2seq_attention",
}


def _write_kernelspec(root):
    folder = os.path.join(root, "kernels", KERNEL)
    os.makedirs(folder)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kerasmlic test kernel",
        "language": "python",
    }
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump(spec, f)


def _outputs_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


# Slow (41 s on 2 cores): the default run keeps test_api.py's notebook-style fit and
# the check below that the notebook uses only the public API.
@pytest.mark.slow
def test_quickstart_notebook_runs_at_tiny_settings(tmp_path, monkeypatch):
    jupyter = os.path.join(tmp_path, "jupyter")
    _write_kernelspec(jupyter)
    monkeypatch.setenv("JUPYTER_PATH", jupyter)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    # The kernel's inline backend turns figures into PNG outputs; Agg would swallow them.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    workdir = os.path.join(tmp_path, "work")
    monkeypatch.setenv("KERASMLIC_NB_WORKDIR", workdir)
    for key, value in TINY.items():
        monkeypatch.setenv(f"KERASMLIC_NB_{key}", value)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "parameters" in nb.cells[2].metadata.get("tags", [])
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=600,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell and its traceback
        pytest.fail(f"a notebook cell failed:\n{str(e)[-4000:]}")

    text = "\n".join(_outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "train: 24 images" in text and "val: 12 images" in text
    assert "best val mAP" in text
    # Reloading reproduces the outputs (float32 rounding at most).
    diff = re.search(r"max \|difference\| of the outputs = (\S+)", text)
    assert diff is not None and float(diff.group(1)) < 1e-6
    assert "registered as kerasmlic>" in text
    # What the notebook wrote: the best model, the SavedModel version 1.
    assert os.path.isfile(os.path.join(workdir, "best.keras"))
    export_dir = os.path.join(workdir, "saved_models", TINY["MODEL"], "1")
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    with open(os.path.join(export_dir, "assets", "labels.txt")) as f:
        assert len(f.read().splitlines()) == 80
    # Four served images, each a line "NAME.jpg: labels".
    assert sum(line.split(":")[0].endswith(".jpg") for line in text.splitlines()) == 4
    # Plots came out as images.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # contact sheet, curves, served images


def test_quickstart_notebook_uses_only_the_public_api():
    # The notebook is the public API's showcase: `import kerasmlic`, no submodule.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    imports = re.findall(r"^\s*(?:from|import)\s+(kerasmlic\S*)", code, flags=re.M)
    assert imports == ["kerasmlic"]
    assert not re.search(r"\bkerasmlic\.[a-z_]+\.[a-z_]", code)
