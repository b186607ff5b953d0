"""The project's shape: one concern per module, the method apart from the plumbing, and no outside references."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(ROOT.glob("*.py"))


def top_level_imports(path: Path) -> set[str]:
    """The top-level module names a file imports at module level (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module.split(".")[0])
    return names


def test_no_top_level_module_is_over_500_lines():
    long = {p.name: n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_the_method_module_imports_only_the_foundations():
    defining = [p for p in MODULES if re.search(r"^class Theta\b", p.read_text(), re.M)]
    assert [p.name for p in defining] == ["search.py"]
    allowed = {"space", "flops", "supernet", "data", "torch", "numpy", "tqdm"} | set(sys.stdlib_module_names)
    assert top_level_imports(defining[0]) <= allowed, top_level_imports(defining[0]) - allowed
    assert len(defining[0].read_text().splitlines()) <= 360
    # several processes reach the engine as an argument (``parallel``); their module needs only torch
    assert top_level_imports(ROOT / "distributed.py") <= {"torch"} | set(sys.stdlib_module_names)


def test_plots_import_only_flops_numpy_and_matplotlib():
    allowed = {"flops", "numpy", "matplotlib"} | set(sys.stdlib_module_names)
    assert top_level_imports(ROOT / "plots.py") <= allowed


@pytest.mark.parametrize("name", ["nas.py", "evaluate.py", "bench.py", "demo.py"])
def test_only_the_nss_command_line_imports_nss(name):
    imports = top_level_imports(ROOT / name)
    assert "nss" not in imports or name == "demo.py"      # the demo runs NSS itself, as a user would
    assert "runs" in imports


def test_the_project_stands_alone():
    """No file a user sees points at the developers' notes."""
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.ipynb"], capture_output=True, text=True,
                           cwd=ROOT).stdout.split() or [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")]
    notes = "|".join(["sha" + "red/", "DES" + "IGN"])      # the notes' folder and file, spelt so as not to name them here
    hits = [f for f in files if re.search(notes, (ROOT / f).read_text(errors="replace"))
            and f != "tests/test_layout.py"]
    assert not hits, hits
