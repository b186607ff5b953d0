"""The notebooks: committed without outputs, teaching with the modules' own functions, and they run at smoke scale.

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
    assert common.SCALES == render.SCALES and common.SCALES[0] == "smoke"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for cell in cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_with_the_claim_in_a_few_lines(path):
    """The first cell is the paper's claim and what the notebook shows, in at most about 12 lines of markdown."""
    first = cells(path)[0]
    assert first["cell_type"] == "markdown" and len(source(first).strip().splitlines()) <= 13
    assert not any(word in source(first).lower() for word in ("minute", "scale", "gpu"))


def module_functions() -> set[str]:
    """The names of every function and method the project's modules define."""
    names = set()
    for path in ROOT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
                names.add(node.name.lstrip("_"))
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_redefines_what_the_modules_provide(path):
    """Notebooks import the method; a function of the same name as one of the modules' is a copy of it."""
    provided = module_functions()
    defined = {node.name.lstrip("_") for code in render.code_cells(path) for node in ast.walk(ast.parse(code))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    assert not defined & provided, sorted(defined & provided)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_ipython_features(path):
    """The notebooks run in any Python process (``render.py --plain``): no IPython display, not even mentioned."""
    for cell in cells(path):
        text = source(cell)
        assert "IPython" not in text and "display(" not in text, f"{path.name}: {text[:80]!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_findings_and_a_value_for_every_scale(path):
    code = "\n".join(render.code_cells(path))
    assert "FINDINGS = " in code and "by_scale(" in code


def test_notebook_01_runs_the_method_as_a_visible_loop_over_the_step_functions():
    code = "\n".join(render.code_cells(NOTEBOOKS[0]))
    for step in (".weight_step(", ".theta_step(", "temperature(", "elite_space("):
        assert step in code, step


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


KERNEL = "05"      # the notebook run in a Jupyter kernel (its cells take the least time); the others run plain
PLAIN = [p for p in NOTEBOOKS if not p.stem.startswith(KERNEL)]


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """One run folder for every notebook's smoke run, as a user's NSS_OUT: 03, 04 and 05 reuse 02's NSS runs and
    evaluation supernet (--reuse) instead of training them again."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.fixture(scope="module")
def plain_smoke(tmp_path_factory, shared_runs):
    """``render.py --plain --scale smoke 01 02 03 04``, once, in one process where no Jupyter module can be imported
    (one interpreter's start-up and imports instead of four); the completed process and its output folder."""
    out = tmp_path_factory.mktemp("plain-smoke")
    env = {**os.environ, "NSS_OUT": str(shared_runs), "NSS_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-c", NO_JUPYTER, ",".join(JUPYTER), str(ROOT / "notebooks" / "render.py"),
                           "--plain", "--scale", "smoke", "--out", str(out), *(p.stem[:2] for p in PLAIN)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    return done, out


@pytest.mark.slow
def test_plain_run_needs_no_jupyter(plain_smoke):
    """``render.py --plain`` runs notebooks 01–04 at smoke scale where no Jupyter module can be imported, and
    notebook 02 writes its figures and findings.json."""
    done, out = plain_smoke
    assert done.returncode == 0, done.stderr[-3000:]
    imported = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert imported == ["IMPORTED []"], imported
    findings = json.loads((out / "02_elite_spaces" / "findings.json").read_text())
    assert {"scale", "dataset", "targets", "architectures_per_group", "mean_deviation_pct", "per_target",
            "elite_lower_median_error_at", "chance_error", "median_error_full_space"} <= set(findings)
    assert findings["scale"] == "smoke" and len(findings["per_target"]) == len(findings["targets"]) == 2
    assert findings["data"] == {"name": "synthetic", "training_images": 1000, "test_images": 250, "classes": 10}
    for row in findings["per_target"].values():
        assert {"elite_space", "deviation_pct", "within_10pct_elite", "within_10pct_full", "median_error_elite",
                "elite_on_pareto_front", "mann_whitney_elite_lower"} <= set(row)
        test = row["mann_whitney_elite_lower"]
        assert test["p"] is None or 0 <= test["p"] <= 1
    pngs = list((out / "02_elite_spaces" / "figures").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_at_smoke_scale(path, tmp_path, request, shared_runs):
    """Every notebook at smoke scale, with its findings and figures: notebook 05 in a Jupyter kernel, which shows
    that the notebooks run there (and ``test_no_ipython_features`` that they need nothing of IPython's), the others
    through ``render.py --plain`` (``plain_smoke``) as the GPU machine runs them, without a kernel's start-up and
    output traffic. Run with the others, the kernel's run comes after the plain one, whose runs it reuses."""
    if path.stem.startswith(KERNEL):
        pytest.importorskip("nbclient")
        figures = tmp_path / "figures"
        nb = render.execute(path, "smoke", timeout=600, env={"NSS_OUT": str(shared_runs), "NSS_DEVICE": "cpu",
                                                              "NSS_FIGURES": str(figures)})
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
    else:
        done, out = request.getfixturevalue("plain_smoke")
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{path.name}: " in done.stderr, f"{path.name} did not finish"
        figures = out / path.stem / "figures"
        assert json.loads((out / path.stem / "findings.json").read_text())
    pngs = list(figures.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 5000 for p in pngs), "the notebook wrote no figure"


CPU_ENV = {"NSS_DEVICE": "cpu", "NSS_DATASET": "folder", "NSS_DATA_DIR": "/nowhere/cifar10-jpeg"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_cpu_scale_is_real_data_in_the_reduced_space_with_enough_for_its_statistics(path, tmp_path):
    """The cpu scale's settings alone (the first code cell, which reads no data): real images from the environment's
    dataset, the reduced space of 512 candidate spaces, and groups large enough for the tests each notebook reports."""
    ns = render.run_cells(path, render.code_cells(path)[:1], "cpu", {**CPU_ENV, "NSS_OUT": str(tmp_path)})
    assert ns["SCALE"] == "cpu"
    name = path.stem[:2]
    if name == "01":
        assert ns["SMALL_DATA"] == "folder" and ns["SMALL_IMAGES"] >= 2000
        return
    data = ns.get("DATA", {})
    assert data == {"dataset": "folder", "data_dir": "/nowhere/cifar10-jpeg"}
    from space import ExpandedSearchSpace
    steps = ns.get("SPACE") or {**ns["STEPS"], "d_max": max(ns["D_MAXES"]), "w_max": max(ns["W_MAXES"])}
    assert ExpandedSearchSpace(**steps).num_spaces == 512
    if name == "02":
        assert len(ns["TARGETS"]) >= 2 and ns["N_ARCHS"] >= 40 and ns["N_BAND"] >= 20
    if name == "03":
        assert len(ns["TARGETS"]) >= 2 and ns["SCRATCH"]["seeds"] >= 2 and ns["REPEATS"] >= 100
    if name == "04":
        assert len(ns["D_MAXES"]) * len(ns["W_MAXES"]) >= 4 and ns["N_SAMPLES"] >= 50
    if name == "05":
        assert ns["N"] >= 50
