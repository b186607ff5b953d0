"""The project's shape: the method copies out alone, imports flow one way, and nothing points outside the project."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ["space.py", "flops.py", "supernet.py", "train.py", "search.py"]
COMMAND_LINES = {"nss", "nas", "evaluate", "bench"}

USER_CODE = '''
import torch
from search import Searcher, SearchSettings, elite_space
from space import ExpandedSearchSpace, Options

class Batches:
    """A user's own iterable of (images, labels) with a length: random tensors, drawn anew every epoch."""
    def __init__(self, n, seed):
        self.n, self.g = n, torch.Generator().manual_seed(seed)
    def __len__(self):
        return self.n
    def __iter__(self):
        for _ in range(self.n):
            yield torch.randn(8, 3, 32, 32, generator=self.g), torch.randint(10, (8,), generator=self.g)

ess = ExpandedSearchSpace.reduced()
settings = SearchSettings(target=6e6, epochs=2, warmup_epochs=1, batch_size=8, seed=3)
val = [(torch.randn(8, 3, 32, 32), torch.randint(10, (8,))) for _ in range(3)]      # a plain list works too
before = torch.random.get_rng_state()
searcher = Searcher(settings, ess, Options.nss(ess), device="cpu")
searcher.fit(Batches(3, 0), val)
assert torch.equal(before, torch.random.get_rng_state()), "the searcher touched torch's global generator"
assert [h["phase"] for h in searcher.history] == ["warmup", "search"], searcher.history
assert searcher.history[1]["executed_flops"] > 0 and searcher.step == 6
elite = elite_space(searcher.theta, searcher.gen, 5, 6e6, ess)
print("elite", elite["elite_space"], round(100 * elite["deviation"], 2))
'''


@pytest.mark.slow
def test_the_method_copies_out_alone(tmp_path):
    """The five method files, alone in an empty folder, run a two-epoch search on a user's own batches."""
    for name in METHOD:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "user.py").write_text(USER_CODE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "user.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("elite {'depths'"), proc.stdout
    assert sorted(p.name for p in tmp_path.glob("*.py")) == sorted(METHOD + ["user.py"])


def imports_of(path: Path) -> set[str]:
    """Every module name ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imports_flow_one_way():
    """No import cycle among the project's modules, and no library module imports a command line."""
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    graph = {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}
    for name in set(modules) - COMMAND_LINES:
        assert not graph[name] & COMMAND_LINES, (name, graph[name] & COMMAND_LINES)

    def reach(start, seen):
        for nxt in graph[start]:
            assert nxt not in seen, f"import cycle: {' -> '.join(seen + [nxt])}"
            reach(nxt, seen + [nxt])
    for name in modules:
        reach(name, [name])


def test_the_project_stands_alone():
    """No file a user sees points at the developers' notes."""
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.ipynb"], capture_output=True, text=True,
                           cwd=ROOT).stdout.split() or [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")]
    notes = "|".join(["sha" + "red/", "DES" + "IGN"])      # the notes' folder and file, spelt so as not to name them here
    hits = [f for f in files if re.search(notes, (ROOT / f).read_text(errors="replace"))
            and f != "tests/test_layout.py"]
    assert not hits, hits
