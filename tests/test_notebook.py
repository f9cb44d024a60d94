"""The quick-start notebook runs top to bottom."""

import json

import nbformat
import pytest
from helpers.runners import REPO
from nbclient import NotebookClient


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOML_OUTPUT_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "test/macro_f1" in outputs and "synthetic-cnn-" in outputs
    metrics_file, = (tmp_path / "runs").glob("synthetic-cnn-*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"] + 0.2  # a first run shows learning
