"""Execute the notebooks, with Jupyter or, where Jupyter is not installed, in one plain Python process.

    python notebooks/render.py                          # every notebook at smoke scale, with a Jupyter kernel
    python notebooks/render.py --scale gpu 02           # one notebook at GPU scale
    python notebooks/render.py --plain --scale gpu 02   # no Jupyter: the code cells in order, in this process

With a kernel, executed copies go to notebooks/executed/ (ignored by git); the committed notebooks
stay without outputs, so that their diffs stay readable. ``--plain`` needs only the project's own
requirements (torch, numpy, matplotlib, tqdm): it reads the notebook as JSON, runs its code cells
top to bottom in one namespace with matplotlib's Agg backend, and writes to ``--out``/<notebook>/
the figures and ``findings.json``, the numbers that the notebook's "what we see" cell reports (its
``FINDINGS`` dict).
"""
from __future__ import annotations

import argparse
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


def execute_plain(path: Path, out: Path, scale: str = "smoke", env: dict | None = None) -> dict:
    """Run a notebook's code cells in order in this process (no kernel, no IPython); figures go to
    ``out``/figures and the notebook's ``FINDINGS`` to ``out``/findings.json, which is returned."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    env = {"NSS_FIGURES": str(out / "figures"), **(env or {})}
    namespace = {"__name__": "__main__", "__file__": str(path)}
    cwd, show = os.getcwd(), plt.show
    sys.path.insert(0, str(path.parent))
    plt.show = lambda *a, **k: plt.close("all")          # a figure is saved by the notebook, then released
    try:
        with environment(scale, env):
            os.chdir(path.parent)
            for i, source in enumerate(code_cells(path)):
                exec(compile(source, f"{path.name}, code cell {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
        plt.show = show
        sys.path.remove(str(path.parent))
    findings = namespace.get("FINDINGS", {})
    tmp = out / ".findings.json.tmp"
    tmp.write_text(json.dumps(findings, indent=2, default=float) + "\n")
    os.replace(tmp, out / "findings.json")
    return findings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument("--plain", action="store_true", help="run without Jupyter, in this Python process")
    parser.add_argument("--out", default=None, help="output folder (default: notebooks/executed, or "
                                                    "notebooks/plain-<scale> with --plain)")
    args = parser.parse_args(argv)
    out = Path(args.out or HERE / ("executed" if not args.plain else f"plain-{args.scale}"))
    out.mkdir(parents=True, exist_ok=True)
    selected = notebooks(args.names)
    if not selected:
        parser.error(f"no notebook matches {' '.join(args.names)}")
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
