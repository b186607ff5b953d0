"""Execute the notebooks and write executed copies to notebooks/executed/ (ignored by git).

    python notebooks/render.py                      # every notebook at smoke scale, on the CPU
    python notebooks/render.py --scale gpu 02       # one notebook at the paper's scale

The committed notebooks stay without outputs, so that their diffs stay readable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def notebooks(selected: list[str] | None = None) -> list[Path]:
    """The project's notebooks, optionally only those whose name starts with one of ``selected``."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not selected or any(p.name.startswith(s) for s in selected)]


def execute(path: Path, scale: str = "smoke", timeout: int = 3600, env: dict | None = None) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in its own folder, with ``NSS_SCALE`` and ``env`` set for its kernel."""
    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update({"NSS_SCALE": scale, **(env or {})})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--scale", choices=("smoke", "gpu"), default="smoke")
    parser.add_argument("--out", default=str(HERE / "executed"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in notebooks(args.names):
        start = time.time()
        nb = execute(path, args.scale)
        tmp = out / f".{path.name}.tmp"
        nbformat.write(nb, tmp)
        os.replace(tmp, out / path.name)
        print(f"{path.name}: {time.time() - start:.0f}s -> {out / path.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
