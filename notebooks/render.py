"""Execute the notebooks, with Jupyter or, where Jupyter is not installed, in one plain Python process.

    python notebooks/render.py                          # every notebook at smoke scale, with a Jupyter kernel
    python notebooks/render.py --scale cpu 02           # one notebook at another scale
    python notebooks/render.py --plain --scale gpu 02   # no Jupyter: the code cells in order, in this process

With a kernel, executed copies go to notebooks/executed/ (ignored by git); the committed notebooks
stay without outputs, so that their diffs stay readable. ``--plain`` needs only the project's own
requirements: it reads the notebook as JSON, runs its code cells top to bottom in one namespace with
matplotlib's Agg backend, and writes to ``--out``/<notebook>/ the figures and ``findings.json``, the
numbers that the notebook's "what we see" cell reports (its ``FINDINGS`` dict). Either way each cell's
number and time are printed as it finishes. The scales (``NSS_SCALE``) are described in the README.
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
sys.path.insert(0, str(HERE))
if __name__ == "__main__":           # Ctrl-C while torch loads: one line, exit code 130
    sys.path.insert(0, str(HERE.parent))
    import startup
    startup.guard()
from common import SCALES  # noqa: E402


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
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    started = {}
    report = lambda cell, cell_index, **_: print(f"{path.stem}: code cell {code.index(cell_index) + 1}/{len(code)} done "
                                                 f"in {time.time() - started.pop(cell_index, time.time()):.0f}s",
                                                 file=sys.stderr, flush=True)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            on_cell_start=lambda cell, cell_index, **_: started.__setitem__(cell_index, time.time()),
                            on_cell_executed=report)
    with environment(scale, env):
        client.execute()
    return nb


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
                start = time.time()
                exec(compile(source, f"{path.name}, code cell {i + 1}", "exec"), namespace)
                print(f"{path.stem}: code cell {i + 1}/{len(cells)} done in {time.time() - start:.0f}s", file=sys.stderr,
                      flush=True)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path.parent))
    return namespace


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


class _Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, as every command line of the project says a bad input
        from rundir import RunError
        raise RunError(message)


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument("--plain", action="store_true", help="run without Jupyter, in this Python process")
    parser.add_argument("--out", default=None, help="output folder (default: notebooks/executed, or "
                                                    "notebooks/plain-<scale> with --plain)")
    args = parser.parse_args(argv)
    selected = notebooks(args.names)
    import runs
    runs.resolve_device(os.environ.get("NSS_DEVICE", "auto"))      # NSS_DEVICE=bogus: one line before any cell runs
    if not selected:
        parser.error(f"no notebook matches {' '.join(args.names)}: the notebooks are "
                     f"{', '.join(p.stem for p in notebooks())}")
    # absolute: the notebooks run in their own folder, and their figures follow --out there
    out = Path(args.out or HERE / ("executed" if not args.plain else f"plain-{args.scale}")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    for path in selected:
        start = time.time()
        if args.plain:
            findings = execute_plain(path, out / path.stem, args.scale)
            written = f"{out / path.stem} ({len(findings)} findings)"
        else:
            import nbformat
            tmp = out / f".{path.name}.tmp"
            nbformat.write(execute(path, args.scale), tmp)
            os.replace(tmp, out / path.name)
            written = out / path.name
        print(f"{path.name}: {time.time() - start:.0f}s -> {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":           # bad input, Ctrl-C and a failing run: one line and an exit code (runs.cli)
    import runs
    runs.cli(main)
