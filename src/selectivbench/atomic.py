"""Atomic file writes and content hashes.

A file written through `atomic_path` appears under its final name only once it is complete
(written to a temporary name in the same directory, flushed to disk, then `os.replace`d), so a
crash or a kill never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HASH = "sha256"  # ~1 GB/s here: 80 MB of classes hash in < 0.1 s


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success fsync it and rename it to `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode 0666 & ~umask, like open()
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.save must not append ".npy" to the temp name
            np.save(f, array, allow_pickle=False)


def file_digest(path: str | os.PathLike) -> str:
    """Hex content hash (HASH) of a file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def json_digest(obj) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
