"""The notebooks: committed without outputs, thin (logic lives in the modules), and they run at smoke scale.

Reading the notebooks needs no Jupyter package (they are JSON); only the kernel runs import nbformat and
nbclient, inside their tests.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import render  # noqa: E402

NOTEBOOKS = render.notebooks()
EXPECTED = ["01_expanded_search_space", "02_elite_spaces", "03_nas_table1", "04_bridging_the_gap",
            "05_design_principles"]
JUPYTER = ("nbclient", "nbformat", "jupyter_client", "jupyter_core", "ipykernel", "IPython")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def test_all_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


def test_the_scales_agree():
    import common
    assert common.SCALES == render.SCALES == ("smoke", "gpu", "paper")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for cell in cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_only_orchestrate(path):
    """No cell defines a function longer than about 10 lines, nor a class: logic lives in the modules."""
    for code in render.code_cells(path):
        tree = ast.parse(code)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.ClassDef), f"{path.name} defines a class"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 12, f"{path.name}: {node.name} is too long"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_ipython_features(path):
    """The notebooks run in any Python process (``render.py --plain``): no IPython display, not even mentioned."""
    for cell in cells(path):
        text = source(cell)
        assert "IPython" not in text and "display(" not in text, f"{path.name}: {text[:80]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_findings_and_three_scales(path):
    code = "\n".join(render.code_cells(path))
    assert "FINDINGS = " in code and 'SCALE == "gpu"' in code and 'SCALE == "smoke"' in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_gpu_scale_fits_ten_minutes_and_the_paper_scale_costs_more(path, tmp_path, capsys):
    """The parameters cells alone, on the CPU and without data (a dataset that does not exist: any attempt to read
    it fails): at gpu scale the cost model's estimate is at most 10 minutes, at paper scale it is larger."""
    env = {"NSS_DEVICE": "cpu", "NSS_DATASET": "folder", "NSS_DATA_DIR": str(tmp_path / "no-data"),
           "NSS_OUT": str(tmp_path / "runs"), "NSS_FIGURES": str(tmp_path / "figures")}
    assert len(render.parameter_cells(path)) < len(render.code_cells(path))
    gpu, paper = render.estimate(path, "gpu", env), render.estimate(path, "paper", env)
    printed = capsys.readouterr().out
    assert 0 < gpu <= 10 and paper > gpu, (gpu, paper)
    assert "within the 10-minute budget" in printed and printed.count("total") == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_the_cost_helpers_of_the_estimates():
    import costs
    g = costs.GPU(a=1e-5, b=1e-14, c=8e-3, masked_slowdown=1.1, source="a test model")
    assert costs.theta_flops(100e9, 1e9) == pytest.approx(1e9 + 0.56 * 99e9) and costs.theta_flops(1e9, 2e9) == 2e9
    assert costs.weight_flops(10e9, 2e9) == 6e9
    shared = costs.searches(g, "NSS", [1e9, 4e9], 2, 6, 1000, 10e9, 100e9)
    alone = costs.searches(g, "NAS", [1e9, 4e9], 2, 6, 1000, 10e9, 100e9, shared_warmup=False)
    assert len(shared) == 3 and len(alone) == 2 and "shared by 2 targets" in shared[0][0]
    warmup = costs.search(g, "", 2, 0, 1000, 10e9, 0, 0)[1]
    assert sum(s for _, s in alone) == pytest.approx(sum(s for _, s in shared) + warmup)   # one warmup saved
    from space import REDUCED, ExpandedSearchSpace
    ess = ExpandedSearchSpace(**REDUCED)
    mean, largest = costs.nearest_space_flops(ess, 6e6)
    assert abs(mean / 6e6 - 1) < 0.2 and largest > mean


def test_render_estimate_prints_every_breakdown(capsys):
    assert render.main(["--estimate", "--scale", "gpu", "02", "05"]) == 0
    out = capsys.readouterr().out
    assert "=== 02_elite_spaces (gpu scale)" in out and "=== 05_design_principles (gpu scale)" in out
    assert out.count("within the 10-minute budget") == 2 and "all notebooks" in out


# Jupyter's modules cannot be imported in the child: a meta-path finder refuses them, then render.py runs
# as __main__; on the way out the child prints which of them are in sys.modules anyway.
NO_JUPYTER = """
import json, runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class NoJupyter:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, NoJupyter())
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("IMPORTED " + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
"""


@pytest.mark.slow
def test_plain_run_needs_no_jupyter(tmp_path):
    """``render.py --plain`` runs notebook 02 at smoke scale where no Jupyter module can be imported, and writes
    its figures and findings.json."""
    out = tmp_path / "out"
    env = {**os.environ, "NSS_OUT": str(tmp_path / "runs"), "NSS_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", NO_JUPYTER, ",".join(JUPYTER), str(ROOT / "notebooks" / "render.py"),
                           "--plain", "--scale", "smoke", "--out", str(out), "02"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert imported == ["IMPORTED []"], imported
    findings = json.loads((out / "02_elite_spaces" / "findings.json").read_text())
    assert {"scale", "dataset", "targets", "architectures_per_group", "mean_deviation_pct", "per_target",
            "elite_lower_median_error_at", "chance_error", "median_error_full_space"} <= set(findings)
    assert findings["scale"] == "smoke" and len(findings["per_target"]) == len(findings["targets"]) == 3
    for row in findings["per_target"].values():
        assert {"elite_space", "deviation_pct", "within_10pct_elite", "within_10pct_full", "median_error_elite",
                "elite_on_pareto_front"} <= set(row)
    pngs = list((out / "02_elite_spaces" / "figures").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if not p.stem.startswith("02")], ids=lambda p: p.stem)
def test_runs_at_smoke_scale(path, tmp_path):
    """Every notebook but 02 in a Jupyter kernel (02 runs its code cells without Jupyter, above: the same
    cells, and the suite's time budget has room for one run of each notebook)."""
    pytest.importorskip("nbclient")
    figures = tmp_path / "figures"
    nb = render.execute(path, "smoke", timeout=600, env={"NSS_OUT": str(tmp_path / "runs"), "NSS_FIGURES": str(figures),
                                                         "NSS_DEVICE": "cpu"})
    pngs = list(figures.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs), "the notebook wrote no figure"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
