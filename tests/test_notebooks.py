"""The notebooks run top to bottom against a tiny run and dataset made here."""

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient
from run_fixtures import copy_run, tiny_run  # noqa: F401  (fixture)

from progan.evaluation.run import evaluate_run

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, **parameters) -> nbformat.NotebookNode:
    """Run a notebook with its ``parameters`` cell set as papermill would set it."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{key} = {str(value)!r}" for key, value in parameters.items())
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


def test_explore_run(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    evaluate_run(run_dir, ["swd"], num_images=16, snapshots="0,0.6", log=lambda line: None)
    text, images = outputs(execute("explore_run.ipynb", RUN=run_dir))
    assert "7 snapshots" in text and "kimg 0.304: 8x8 fading" in text
    assert "best swd: network-" in text
    assert images >= 6  # samples, truncation, walk, growth, metrics, losses


def test_dataset(tiny_dataset):
    text, images = outputs(execute("dataset.ipynb", DATA=tiny_dataset))
    assert "256 images" in text and "8 -> 4" in text
    assert images == 2


@pytest.mark.parametrize("name", ["explore_run.ipynb", "dataset.ipynb"])
def test_notebooks_use_a_parameters_cell_and_the_public_api(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    source = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "os.environ" not in source
    imported = [line for line in source.splitlines() if line.startswith(("from progan", "import progan"))]
    assert imported and not any(" _" in line or "._" in line for line in imported), imported
