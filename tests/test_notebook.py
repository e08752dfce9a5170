"""notebooks/walkthrough.ipynb runs top to bottom, and is committed without outputs."""

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
CELL_TIMEOUT_S = 600  # The training cell (mostly compilation) takes ~3 min on a busy 2-core box.


def test_notebook_is_committed_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
           and (cell.outputs or cell.execution_count is not None)]
  assert not dirty, (f"Code cells {dirty} of {NOTEBOOK.name} hold outputs; clear them "
                     "(Jupyter: Edit > Clear Outputs of All Cells) before committing.")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  """Every cell runs without error; the cells assert parity themselves."""
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # The kernel inherits it: its workdir lands here.
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # cwd of the kernel
  try:
    client.execute()
  finally:
    # The executed copy (with outputs and any traceback) is kept for inspection; the
    # committed notebook is never written.
    nbformat.write(notebook, tmp_path / NOTEBOOK.name)
  executed = [c for c in notebook.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in executed)
  errors = [o for c in executed for o in c.outputs if o.output_type == "error"]
  assert not errors
