"""Execute the notebooks, with Jupyter or, where Jupyter is not installed, in one plain Python process.

    python notebooks/render.py                          # every notebook at smoke scale, with a Jupyter kernel
    python notebooks/render.py --scale gpu 02           # one notebook at GPU scale
    python notebooks/render.py --plain --scale gpu 02   # no Jupyter: the code cells in order, in this process
    python notebooks/render.py --estimate --scale gpu   # every notebook's GPU time at that scale, nothing run

With a kernel, executed copies go to notebooks/executed/ (ignored by git); the committed notebooks
stay without outputs, so that their diffs stay readable. ``--plain`` needs only the project's own
requirements (torch, numpy, matplotlib, tqdm): it reads the notebook as JSON, runs its code cells
top to bottom in one namespace with matplotlib's Agg backend, and writes to ``--out``/<notebook>/
the figures and ``findings.json``, the numbers that the notebook's "what we see" cell reports (its
``FINDINGS`` dict). ``--estimate`` runs only each notebook's parameters cells (its code cells up to
and including the one that sets ``GPU_MINUTES``), which print the cost model's breakdown of the
selected scale (``costs.py``) without loading data; it needs no GPU and no Jupyter either.

Scales (``NSS_SCALE``): ``smoke`` (a reduced space and synthetic data on the CPU, what the tests
run), ``gpu`` (the full space on CIFAR with shortened schedules, each notebook within 10 minutes of
one H100 by the cost model) and ``paper`` (the paper's settings, hours).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCALES = ("smoke", "gpu", "paper")


def notebooks(selected: list[str] | None = None) -> list[Path]:
    """The project's notebooks, optionally only those whose name starts with one of ``selected``."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not selected or any(p.name.startswith(s) for s in selected)]


def code_cells(path: Path) -> list[str]:
    """The sources of a notebook's code cells, read as plain JSON (no Jupyter package needed)."""
    nb = json.loads(path.read_text())
    join = lambda source: source if isinstance(source, str) else "".join(source)
    return [join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@contextmanager
def environment(scale: str, env: dict | None):
    """``NSS_SCALE`` and ``env`` set for the duration, then the environment restored."""
    saved = dict(os.environ)
    os.environ.update({"NSS_SCALE": scale, **(env or {})})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def execute(path: Path, scale: str = "smoke", timeout: int = 3600, env: dict | None = None):
    """Run a notebook top to bottom in a Jupyter kernel, in its own folder; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with environment(scale, env):
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def parameter_cells(path: Path) -> list[str]:
    """A notebook's first code cells, up to and including the one that assigns ``GPU_MINUTES``: its settings
    and their cost estimate, which load no data and do no heavy work."""
    cells = code_cells(path)
    for i, source in enumerate(cells):
        if any(isinstance(n, ast.Name) and n.id == "GPU_MINUTES" and isinstance(n.ctx, ast.Store)
               for n in ast.walk(ast.parse(source))):
            return cells[:i + 1]
    raise ValueError(f"{path.name}: no code cell sets GPU_MINUTES")


def run_cells(path: Path, cells: list[str], scale: str, env: dict | None = None) -> dict:
    """Exec ``cells`` in order in one namespace, in the notebook's folder with it on ``sys.path`` and the scale set;
    returns the namespace."""
    namespace = {"__name__": "__main__", "__file__": str(path)}
    cwd = os.getcwd()
    sys.path.insert(0, str(path.parent))
    try:
        with environment(scale, env):
            os.chdir(path.parent)
            for i, source in enumerate(cells):
                exec(compile(source, f"{path.name}, code cell {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path.parent))
    return namespace


def estimate(path: Path, scale: str = "gpu", env: dict | None = None) -> float:
    """Run only the notebook's parameter cells (they print the cost model's breakdown); its ``GPU_MINUTES``."""
    return float(run_cells(path, parameter_cells(path), scale, env)["GPU_MINUTES"])


def execute_plain(path: Path, out: Path, scale: str = "smoke", env: dict | None = None) -> dict:
    """Run a notebook's code cells in order in this process (no kernel, no IPython); figures go to
    ``out``/figures and the notebook's ``FINDINGS`` to ``out``/findings.json, which is returned."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    env = {"NSS_FIGURES": str(out / "figures"), **(env or {})}
    show = plt.show
    plt.show = lambda *a, **k: plt.close("all")          # a figure is saved by the notebook, then released
    try:
        namespace = run_cells(path, code_cells(path), scale, env)
    finally:
        plt.show = show
    findings = namespace.get("FINDINGS", {})
    tmp = out / ".findings.json.tmp"
    tmp.write_text(json.dumps(findings, indent=2, default=float) + "\n")
    os.replace(tmp, out / "findings.json")
    return findings


def print_estimates(selected: list[Path], scale: str) -> int:
    """Each notebook's cost breakdown at ``scale`` (printed by its parameters cells), then the totals."""
    totals = {}
    for path in selected:
        print(f"=== {path.stem} ({scale} scale)", flush=True)
        totals[path.stem] = estimate(path, scale)
        print(flush=True)
    print(f"=== GPU minutes at {scale} scale")
    for name, minutes in totals.items():
        print(f"  {name:<30s} {minutes:8.1f} min")
    print(f"  {'all notebooks':<30s} {sum(totals.values()):8.1f} min")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument("--plain", action="store_true", help="run without Jupyter, in this Python process")
    parser.add_argument("--estimate", action="store_true", help="run only the parameters cells and print the "
                                                                "GPU time the cost model gives each notebook")
    parser.add_argument("--out", default=None, help="output folder (default: notebooks/executed, or "
                                                    "notebooks/plain-<scale> with --plain)")
    args = parser.parse_args(argv)
    selected = notebooks(args.names)
    if not selected:
        parser.error(f"no notebook matches {' '.join(args.names)}")
    if args.estimate:
        return print_estimates(selected, args.scale)
    out = Path(args.out or HERE / ("executed" if not args.plain else f"plain-{args.scale}"))
    out.mkdir(parents=True, exist_ok=True)
    for path in selected:
        start = time.time()
        if args.plain:
            findings = execute_plain(path, out / path.stem, args.scale)
            print(f"{path.name}: {time.time() - start:.0f}s -> {out / path.stem} ({len(findings)} findings)", file=sys.stderr)
            continue
        import nbformat
        nb = execute(path, args.scale)
        tmp = out / f".{path.name}.tmp"
        nbformat.write(nb, tmp)
        os.replace(tmp, out / path.name)
        print(f"{path.name}: {time.time() - start:.0f}s -> {out / path.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
