"""Atomic file writes: temp file in the same folder, fsync, rename.

A crash leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # the owner tag lets remove_dead_temps tell a live writer's temp from a dead one's
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + owner_tag(), dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any file
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def ensure_folder(path: str | os.PathLike, *subfolders: str) -> Path:
    """Make the output folder ``path`` (and ``subfolders`` in it); a UserError, not a
    traceback, when it or one of its parents is a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for sub in subfolders:
            (out / sub).mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise UserError(f"cannot make the folder {out}: {e.filename} is a file") from None
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# A temp file that would be older than this if its writer were alive is garbage: a
# writer touches its temp at least every few seconds (every batch of clips).
STALE_TEMP_SECONDS = 3600.0
_OWNER = re.compile(r"@([^@/]+)@(\d+)@[^@]*$")


def owner_tag() -> str:
    """``@<host>@<pid>@``, for temp names: who is writing the file. The host is the pod
    name under Kubernetes, so pods sharing a volume never mistake each other's pids."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    return f"@{host}@{os.getpid()}@"


def owned_temp(folder: str | os.PathLike, name: str) -> Path:
    """A temp path in ``folder`` for writing ``name``, tagged with this process as its owner."""
    return Path(folder) / f"{TMP_PREFIX}{name}{owner_tag()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dead_temps(folder: str | os.PathLike, stale_after_s: float = STALE_TEMP_SECONDS) -> int:
    """Delete the temp files under ``folder`` whose writer is gone (a killed run's
    leftovers); returns how many.

    Safe while other processes, on this machine or other pods sharing the volume, are
    writing into the same folder: a temp is removed only if its owner tag names a
    process on this host that no longer exists, or it has not been written to for
    ``stale_after_s`` (the only test that works across hosts, where pids mean nothing).
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    host_tag = owner_tag().split("@")[1]
    now = time.time()
    n = 0
    for p in root.rglob(TMP_PREFIX + "*"):
        m = _OWNER.search(p.name)
        try:
            if m and m.group(1) == host_tag and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
                dead = True
            else:
                dead = now - p.stat().st_mtime > stale_after_s
            if dead:
                p.unlink()
                n += 1
        except FileNotFoundError:
            pass  # its writer renamed or removed it meanwhile
    return n
