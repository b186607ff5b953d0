"""The notebooks: committed without outputs, thin (logic lives in the modules), and they run at smoke scale."""
import ast
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import render  # noqa: E402

NOTEBOOKS = render.notebooks()
EXPECTED = ["01_expanded_search_space", "02_elite_spaces", "03_nas_table1", "04_bridging_the_gap",
            "05_design_principles"]


def test_all_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_only_orchestrate(path):
    """No cell defines a function longer than about 10 lines, nor a class: logic lives in the modules."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.ClassDef), f"{path.name} defines a class"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 12, f"{path.name}: {node.name} is too long"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_at_smoke_scale(path, tmp_path):
    figures = tmp_path / "figures"
    nb = render.execute(path, "smoke", timeout=600, env={"NSS_OUT": str(tmp_path / "runs"), "NSS_FIGURES": str(figures),
                                                         "NSS_DEVICE": "cpu"})
    pngs = list(figures.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs), "the notebook wrote no figure"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
