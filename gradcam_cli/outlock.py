"""One run owns its output folder.

Two runs writing into the same `--out` would each write a report that lists only its own images,
and the other's pictures would stay on disk unlisted. A run holds `fcntl.flock` on OUT/.gradcam.lock
for its whole length; a second run finds it held and stops (exit 2) naming the first one's pid.
The kernel releases a flock when its process dies, however it dies, so a lock file left by a run
that was killed is taken over without any staleness guess.

`--shard K/N` runs share one folder by design: each holds the folder's lock shared and its own
share's lock (.gradcam.K-of-N.lock) exclusively, so shares run side by side while a plain run,
`gradcam merge` or `gradcam report` (exclusive holders) waits for none of them. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError
from .files import os_reason

__all__ = ["LOCK_NAME", "OutputLockedError", "check_unlocked", "output_lock"]

LOCK_NAME = ".gradcam.lock"  # hidden: folder walks and globs skip it


class OutputLockedError(UsageError):
    """Another live run holds the output folder."""


def _lock_names(shard: tuple[int, int] | None) -> list[tuple[str, int]]:
    """(file name, flock mode) in the order they are taken."""
    if shard is None:
        return [(LOCK_NAME, fcntl.LOCK_EX)]
    k, n = shard
    return [(LOCK_NAME, fcntl.LOCK_SH), (f".gradcam.{k}-of-{n}.lock", fcntl.LOCK_EX)]


def check_unlocked(out_dir: Path, shard: tuple[int, int] | None = None) -> None:
    """Fail now, before a model is loaded, when another run holds `out_dir` (or the share)."""
    for name, mode in _lock_names(shard):
        path = Path(out_dir) / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # no lock file: free (output_lock reports any real trouble with it)
        try:
            if _try_lock(fd, mode, path, out_dir):
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def output_lock(out_dir: Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Create `out_dir` and hold its lock(s) while inside; exclusive lock files are removed on
    exit (a shared one may still be held by other shares, so it stays)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    held: list[tuple[Path, int, int]] = []
    try:
        for name, mode in _lock_names(shard):
            path = out_dir / name
            fd = _locked_file(path, mode, out_dir)
            held.append((path, mode, fd))
            if mode == fcntl.LOCK_EX:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        for path, mode, fd in reversed(held):
            # Unlink while still holding the lock: a run waiting on this very file then finds
            # it gone (see _locked_file) instead of locking a file nobody else can see.
            if mode == fcntl.LOCK_EX:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)


def _locked_file(path: Path, mode: int, out_dir: Path) -> int:
    """Open and lock `path`, retrying when the file locked was unlinked by a run finishing."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            reason = "it is a symlink" if exc.errno == errno.ELOOP else os_reason(exc)
            raise UsageError(
                f"cannot lock --out {out_dir}: {LOCK_NAME} cannot be opened ({reason}); "
                "remove it or choose another output folder"
            ) from exc
        try:
            if not _try_lock(fd, mode, path, out_dir):
                # Refusing every run on such a mount would be worse than what the lock prevents.
                warnings.warn(
                    f"--out {out_dir}: this file system does not support file locks; running "
                    "without one, so make sure no other run writes there",
                    stacklevel=3,
                )
                return fd
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


# What flock raises on a file system without locks (some NFS v3 and SMB mounts, FUSE).
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


def _try_lock(fd: int, mode: int, path: Path, out_dir: Path) -> bool:
    """Take the lock, or raise OutputLockedError naming its holder; False when the file system
    has no locks at all."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputLockedError(
            f"--out {out_dir} is in use by another gradcam run ({_holder(path)}); wait for it "
            "to finish or choose another output folder"
        ) from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        text = ""
    if text.isdigit() and _alive(int(text)):
        return f"pid {text}"
    # Shares hold the folder's lock shared and write no pid into it (the pid there, if any,
    # is that of a run that was killed).
    return "a --shard run" if path.name == LOCK_NAME else "pid unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except OSError:
        return False
