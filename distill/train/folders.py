"""Output folders: checked before any work starts, and one run per folder.

`check_output_folder`: an --out that is a file, lies under a file or cannot be written is one line
before anything runs. `RunLock`: a lock that a training run holds on its folder for its whole life.

The lock is an advisory `flock` on `RUN_FOLDER/.lock`, so the kernel releases it whenever the holder
exits, however it exits (SIGKILL included): a lock left by a killed run is never stale. The file records
the holder (pid, host, command, start time) so that a second run can name it in its one-line error.
On file systems without flock (some network mounts) the recorded pid and host decide instead: a lock
whose holder is a dead process on this host is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from distill.errors import ConfigError

LOCK_NAME = ".lock"


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (and its parents) if needed and make sure a file can be written in it; otherwise
    one `ConfigError` line naming the folder and why."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise ConfigError(f"{what} {path}: {where}; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"{what} {path}: cannot write there ({err.strerror or err}); pass a writable folder"
        ) from None
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """A file to write: not a folder, and its folder writable (`check_output_folder`); else one line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; pass a file name")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{what} {path}: lies under {parent}, which is a file; pass a writable path")
    check_output_folder(path.parent, f"the folder of {what} {path},")
    return path


class RunLock:
    """Held from `acquire()` to `release()` (or the process's exit). Raises `ConfigError` naming the
    holder when another live process holds the folder."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the holder may unlink the file as we lock it: lock the file the path names
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"{self.path.parent}: {self._holder()}; wait for it to finish (or stop it), "
                                      "or choose another output folder") from None
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                fd = self._acquire_by_record()  # no flock here: decide by the recorded pid and host
                break
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def _acquire_by_record(self) -> int:
        info = self._read()
        if info and info.get("pid") != os.getpid() and _alive(info):
            raise ConfigError(f"{self.path.parent}: {self._holder()}; wait for it to finish (or stop it), "
                              "or choose another output folder")
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _holder(self) -> str:
        info = self._read()
        if not info:
            return "another run is using this folder"
        return (f"another run is using this folder (pid {info.get('pid')} on {info.get('host')}, since "
                f"{info.get('started')}: {info.get('command', '?')})")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:  # a lock dropped without release() (a Trainer built but never fitted)
        self.release()


def _alive(info: dict) -> bool:
    """Whether the recorded holder may still run: a live pid on this host, or any holder elsewhere."""
    if info.get("host") != socket.gethostname():
        return True  # cannot tell from here; be safe
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True
