"""Writing files whole or not at all, and caches of derived data kept beside an image.

Profiles and kernel symbols are measured once (each costs a boot) and kept in files;
`cached_bytes` and `cached_json` are the one way they are read back or made again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vmfault.errors import VmfaultError

__all__ = ["cache_path", "cached_bytes", "cached_json", "write_atomically"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

T = TypeVar("T")


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it and a rename.

    Readers see the old file or the new one, never a part; concurrent writers of the same
    path do not collide (the temporary name carries the process id). On failure the
    temporary file is removed and the error propagates.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def cache_path(directory: Path, kind: str, key: object) -> Path:
    """The cache file of a `kind` of data for `key` (anything JSON can write) in
    `directory`: `KIND-HASH.json`, the hash of the key's JSON text."""
    digest = hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()[:16]
    return directory / f"{kind}-{digest}.json"


def cached_bytes(path: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes stored at `path`, or `make()`'s, stored atomically first."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return data


def cached_json(
    path: Path,
    make: Callable[[], T],
    *,
    decode: Callable[[Any], T],
    encode: Callable[[T], Any],
    accept: Callable[[T], bool] = lambda _: True,
    refresh: bool = False,
) -> T:
    """The value stored as JSON at `path` if it decodes and is accepted, else `make()`'s,
    stored atomically. A file that is unreadable or does not decode (`decode` raising
    ValueError, TypeError, KeyError or a VmfaultError) is logged and replaced; `refresh`
    ignores the file."""
    if not refresh:
        try:
            value = decode(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, VmfaultError) as exc:
            logger.warning("ignoring the unreadable cache file %s: %s", path, exc)
        else:
            if accept(value):
                logger.debug("using the cached %s", path)
                return value
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(encode(value), indent=1) + "\n").encode("utf-8"))
    return value
