"""The notebooks run top to bottom against a tiny run and dataset made here."""

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient
from run_fixtures import copy_run, tiny_run  # noqa: F401  (fixture)

from progan.evaluation.run import evaluate_run

NOTEBOOKS = REPO / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def outputs(notebook) -> tuple[str, int]:
    """(all stream text, number of images) of an executed notebook."""
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text.append(output.get("text", ""))
            images += "image/png" in output.get("data", {})
    return "".join(text), images


def test_explore_run(tiny_run, tmp_path, monkeypatch):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    evaluate_run(run_dir, ["swd"], num_images=16, snapshots="0,0.6", log=lambda line: None)
    monkeypatch.setenv("PROGAN_RUN", str(run_dir))
    text, images = outputs(execute("explore_run.ipynb"))
    assert "7 snapshots" in text and "kimg 0.304: 8x8 fading" in text
    assert "best swd: network-" in text
    assert images >= 6  # samples, truncation, walk, growth, metrics, losses


def test_dataset(tiny_dataset, monkeypatch):
    monkeypatch.setenv("PROGAN_DATA", str(tiny_dataset))
    text, images = outputs(execute("dataset.ipynb"))
    assert "256 images" in text and "8 -> 4" in text
    assert images == 2


@pytest.mark.parametrize("name", ["explore_run.ipynb", "dataset.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
