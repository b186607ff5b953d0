"""The files of a run: a folder held by one run at a time (``run_folder``), files replaced whole or not at all
(``write_atomic``, ``write_json``, ``save_torch``) and checkpoints read safely (``load_checkpoint``); every
failure is one line (``RunError``)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from train import Diverged

LOCK = ".lock"
DEMO = ".quick"          # marks a folder that a --quick demo made: the next demo replaces it


class RunError(Exception):
    """Bad input to a run (flags, target, files, data): reported as one line, exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with one line on what was kept and how to go on."""


def is_main() -> bool:
    """Rank 0 of a torchrun world (or a process on its own): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


# ---- Atomic files --------------------------------------------------------------------------------

def write_atomic(path: Path, write: Callable[[Path], None]):
    """Write through a temporary file beside ``path``, then rename it; a failed write leaves no temporary file."""
    if not is_main():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise RunError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_json(path: Path, obj):
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_torch(obj, path: Path):
    """torch.save through a Python file object, so a full disk raises its OSError (torch's own writer
    reports it as an unreadable RuntimeError)."""
    errors = []
    with open(path, "wb") as f:
        def write(b):
            try:
                return f.write(b)
            except OSError as e:
                errors.append(e)
                raise
        try:
            torch.save(obj, SimpleNamespace(write=write, flush=f.flush))
        except RuntimeError:
            if errors:
                raise errors[0] from None
            raise


def not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read ('no such file', 'it is a folder', 'it is not a regular file'), or
    None when it is one."""
    path = Path(path)
    if path.is_file():
        return None
    return "it is a folder" if path.is_dir() else "it is not a regular file" if path.exists() else "no such file"


@contextmanager
def reading(path: Path, what: str, fix: str = "delete it or pass --overwrite"):
    """Read a side file whole inside: any failure of the reading code (a missing key, a wrong type, a bad value, not
    only the ones foreseen) is one line, "<path> <what> (<why>): <fix>" (``what``: "is corrupt", say; ``fix``: what to
    do, for a file the run wrote by default); an OSError is "cannot read <path>"."""
    try:
        yield
    except (RunError, MemoryError):
        raise
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:
        why = str(e).splitlines()[0][:120] if str(e) else ""
        raise RunError(f"{path} {what} ({type(e).__name__}{': ' + why if why else ''}): {fix}") from None


def load_checkpoint(path: Path, fix: str = "delete it or pass --overwrite") -> dict:
    """A checkpoint (or network file) as a dict, read on the CPU; anything else is a one-line RunError."""
    path = Path(path)
    if not_a_file(path):
        raise RunError(f"cannot read the checkpoint {path}: {not_a_file(path)}")
    with reading(path, "is corrupt or not one of ours", fix):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"it holds a {type(state).__name__}, not a dict")
    return state


def os_error(e: OSError) -> str:
    """'<file>: <reason>' of an OSError, with what to do about the usual ones."""
    what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (e.strerror or str(e))
    fix = {28: "free some space", 13: "use a folder you may write to (--out)", 30: "use a writable --out",
           17: "a file stands where a folder is needed", 20: "a file stands where a folder is needed"}.get(e.errno)
    return f"{what}{': ' + fix if fix else ''}"


# ---- Run folders ---------------------------------------------------------------------------------

def _lock(run_dir: Path) -> tuple[int, list[Path]]:
    """Create ``run_dir`` if needed and lock its LOCK file (released when the fd closes or the process dies);
    the fd and the folders made (outermost first). A folder locked by a live run is refused with one line."""
    while True:
        created, p = [], run_dir
        while not p.is_dir() and p != p.parent:
            created.insert(0, p)
            p = p.parent
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunError(f"{run_dir} is in use by another run{f' (pid {holder})' if holder else ''}: wait for "
                           f"it to finish, or pass another --name") from None
        with suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(run_dir / LOCK).st_ino:   # else its last holder removed the folder
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd, created
        os.close(fd)


def empty(run_dir: Path):
    """Remove everything in ``run_dir`` but the lock: files, temporary files and folders alike."""
    for p in run_dir.iterdir():
        if p.name == LOCK:
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            raise RunError(f"cannot remove {p}: {e.strerror or e}") from None


def _holds_a_run(run_dir: Path) -> bool:
    """Anything but the lock, the demo mark, a config.json and temporary files (what a run killed before its first
    epoch leaves)."""
    return any(p.name not in (LOCK, DEMO, "config.json") and not (p.name.startswith(".") and p.name.endswith(".tmp"))
               for p in run_dir.iterdir())


def rerun_advice(overwrite: bool, reuse: bool) -> str:
    """How to go on from what an interrupted run kept, given how it was started."""
    return ("rerun the same command (--reuse goes on from it)" if reuse else
            "rerun the command with --resume in place of --overwrite" if overwrite else
            "rerun the same command with --resume")


@contextmanager
def run_folder(run_dir: Path, resume: bool = False, overwrite: bool = False, progress: str | None = "checkpoint.pt",
               reuse: bool = False, demo: bool = False):
    """Hold ``run_dir`` for one run, from its checks to its last file.

    * A second run on the folder is refused with one line (a lock on ``<run_dir>/.lock``).
    * A folder holding a run is refused, unless ``resume`` (which needs the file ``progress``; None: the command
      cannot resume) or ``overwrite``, which empties the folder first. Without ``resume`` the folder starts empty.
    * If the run fails or is interrupted before ``progress`` exists, the folder is emptied (and removed if this
      run made it), so a plain rerun starts clean; Ctrl-C and a divergence say what was kept.
    * ``reuse``: resume when the folder holds a run's progress file (the caller refuses another identity, or
      starts afresh), else start afresh, as ``overwrite`` would.
    * ``demo`` (a --quick demo): the folder is marked as a demo's, and a folder that holds an earlier demo is
      replaced, with one line saying so; a folder that holds any other run is refused as above.
    """
    run_dir = Path(run_dir)
    again = rerun_advice(overwrite, reuse)
    if reuse:
        resume = progress is not None and (run_dir / progress).is_file()
        overwrite = not resume
    if not is_main():                      # several processes: rank 0 holds and writes the folder
        yield run_dir
        return
    kept = lambda: progress is not None and (run_dir / progress).is_file()
    if resume and progress is None:
        raise RunError("nothing to resume: this command writes no checkpoint; run it again instead")
    if resume and not kept():
        why = {"no such file": "does not exist"}.get(not_a_file(run_dir / progress), not_a_file(run_dir / progress))
        raise RunError(f"nothing to resume: {run_dir / progress} {why.removeprefix('it ')}")
    fd, created = _lock(run_dir)
    try:
        if not resume and not overwrite and _holds_a_run(run_dir):
            if not (demo and (run_dir / DEMO).is_file()):
                raise RunError(f"{run_dir} already holds a run: pass {'--resume to continue it, ' if progress else ''}"
                               f"--overwrite to replace it, or --name for a new one")
            print(f"{run_dir}: replacing the previous --quick demo run", flush=True)
        if not resume:
            empty(run_dir)
        if demo:
            (run_dir / DEMO).touch()
        try:
            yield run_dir
        except BaseException as e:
            if not kept() and not resume:
                empty(run_dir)
                if created:
                    (run_dir / LOCK).unlink(missing_ok=True)
                    for d in reversed(created):
                        with suppress(OSError):
                            d.rmdir()
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(
                    f"interrupted; {run_dir / progress} keeps what finished: {again}"
                    if kept() else "interrupted before anything was kept: rerun the same command") from None
            if isinstance(e, Diverged) and kept():
                raise Diverged(f"{e}; {run_dir / progress} keeps the last good state: pass --overwrite "
                               f"(or another --name) to start over with new settings") from None
            raise
    finally:
        os.close(fd)
