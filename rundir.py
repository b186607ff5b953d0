"""The files of a run: a run folder held by one run at a time, atomic writes and checkpoints.

* ``run_folder``: a context manager that holds ``runs/<name>`` exclusively (an ``fcntl`` lock on its
  ``.lock`` file), refuses a folder that holds another run unless --resume or --overwrite (which first
  deletes every file of the old run), and, if the run fails or is interrupted before its first
  checkpoint, removes what it wrote, so a plain rerun starts clean;
* ``write_atomic`` / ``write_json`` / ``save_torch``: a file is replaced whole or not at all, a failed
  write leaves no temporary file, and an OSError (full disk, no permission) is one line;
* ``load_checkpoint``: a missing, unreadable, corrupt or foreign checkpoint is one line.

``runs.py`` builds the command lines on these; ``RunError`` is the one-line failure of every run.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

import distributed
from supernet import Diverged


class RunError(Exception):
    """Bad input to a run (flags, target, files, data, memory): reported as one line, exit code 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with one line on what was kept and how to go on."""


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------

def write_atomic(path: Path, write: Callable[[Path], None]):
    """Write through a temporary file beside ``path`` and rename it, so a crash never leaves a half-written
    file; a failed write removes its temporary file, and an OSError (full disk, no permission) is a RunError."""
    if not distributed.is_main():      # several processes: rank 0 alone writes
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


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------

# A run folder belongs to one run at a time. Every file a run writes is one of RUN_FILES; a whole-folder
# run (NSS, NAS, an evaluation supernet) owns them all, scratch and score runs only their own result file.
LOCK = ".lock"
RUN_FILES = ("config.json", "checkpoint.pt", "result.json", "nas.json", "supernet.pt", "train.json", "scratch.json",
             "scores.json")


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p; the folders it created, outermost first. An OSError (a file in the way, no permission) is one line."""
    created, p = [], path
    try:
        while not p.is_dir() and p != p.parent:
            created.insert(0, p)
            p = p.parent
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run folder {path}: {e.strerror or e}") from None
    return created


def _lock(run_dir: Path) -> tuple[int, list[Path]]:
    """Create ``run_dir`` if needed and lock its LOCK file (fcntl.flock, released when the fd closes or the
    process dies); the fd and the folders made. A folder locked by a live run is refused with one line."""
    while True:
        created, path = _make_dirs(run_dir), run_dir / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot use the run folder {run_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunError(f"{run_dir} is in use by another run{f' (pid {holder})' if holder else ''}: wait for it "
                           f"to finish, or pass another --name") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:     # else the run that held it removed the folder meanwhile: start again
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd, created
        os.close(fd)


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _remove(run_dir: Path, names) -> None:
    """Delete the files ``names`` of a run and their temporary files."""
    for name in names:
        for p in [run_dir / name, run_dir / f".{name}.tmp", *run_dir.glob(f".{name}.*.tmp")]:
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                raise RunError(f"cannot remove {p}: {e.strerror or e}") from None


@contextmanager
def run_folder(run_dir: Path, cfg, own: tuple[str, ...] | None = None,
               progress: str | None = "checkpoint.pt"):
    """Hold ``run_dir`` for one run, from its checks to its last file.

    * A second run on the folder is refused with one line (a lock on ``<run_dir>/.lock``).
    * A folder holding a run is refused, unless --resume (which needs the file ``progress``) or --overwrite,
      which first deletes every file of the old run: ``own``, or all RUN_FILES in a whole-folder run
      (``own`` None). A folder with only a config.json (a run killed before its first epoch) holds no run.
    * If the run fails or is interrupted before ``progress`` exists, the files it wrote (and the folders it
      made) are removed, so a plain rerun starts clean; Ctrl-C and a divergence say what was kept.
    """
    run_dir, names = Path(run_dir), own or RUN_FILES
    if not distributed.is_main():      # several processes: rank 0 holds and writes the folder
        yield run_dir
        return
    missing = lambda: progress is None or not (run_dir / progress).is_file()
    if cfg.resume and missing():
        raise RunError(f"nothing to resume: {run_dir / progress} does not exist" if progress else
                       "nothing to resume: this command writes no checkpoint, run it again instead")
    fd, created = _lock(run_dir)
    try:
        if cfg.resume and missing():
            raise RunError(f"nothing to resume: {run_dir / progress} does not exist")
        if not cfg.resume and not cfg.overwrite:
            if own is None and any(p.name not in (LOCK, "config.json") and not _is_tmp(p.name) for p in run_dir.iterdir()):
                raise RunError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to "
                               f"replace it, or --name for a new one")
            for name in own or ():
                if (run_dir / name).exists():
                    raise RunError(f"{run_dir / name} exists: pass {'--resume to finish it, ' if progress else ''}"
                                   f"--overwrite to replace it, or --name for a new one")
        if not cfg.resume:    # the old run's files (--overwrite), or what a run killed early left: tmp files, config
            _remove(run_dir, names)
        try:
            yield run_dir
        except BaseException as e:
            kept = not missing()
            if not kept and not cfg.resume:
                _remove(run_dir, names)
                if created:
                    (run_dir / LOCK).unlink(missing_ok=True)
                    for d in reversed(created):
                        with suppress(OSError):
                            d.rmdir()
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, Interrupted):
                raise Interrupted(
                    f"interrupted; {run_dir / progress} keeps what finished: rerun the same command with --resume"
                    if kept else f"interrupted before {run_dir / (progress or names[0])} was written; nothing of this "
                    f"run was kept: rerun the same command") from None
            if isinstance(e, Diverged) and kept:
                raise Diverged(f"{e}; {run_dir / progress} keeps the last good state: pass --overwrite "
                               f"(or another --name) to start over with new settings") from None
            raise
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str) -> str:
    """The text of a side file (``what``: "the space file", say); a missing or unreadable file, or one
    that is not UTF-8, is one line."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise RunError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except ValueError:
        raise RunError(f"cannot read {what} {path}: it is not UTF-8 text") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint (or supernet file) as a dict, read on the CPU; anything else is a one-line RunError."""
    if not path.is_file():
        raise RunError(f"cannot read the checkpoint {path}: {'it is a folder' if path.exists() else 'no such file'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise RunError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:
        raise RunError(f"cannot read the checkpoint {path} ({type(e).__name__}); it is corrupt or not ours: "
                       f"delete it or pass --overwrite") from None
    if not isinstance(state, dict):
        raise RunError(f"the checkpoint {path} is not one of ours (it holds a {type(state).__name__}): "
                       f"delete it or pass --overwrite")
    return state


def os_error(e: OSError) -> str:
    """'<file>: <reason>' of an OSError, with what to do about the usual ones."""
    what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (e.strerror or str(e))
    fix = {28: "free some space", 13: "use a folder you may write to (--out)", 30: "use a writable --out"}.get(e.errno)
    return f"{what}{': ' + fix if fix else ''}"
