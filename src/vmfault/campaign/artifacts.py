"""What a worker on another host needs to run a campaign's experiments, content-addressed.

A guest image is a directory of files (the kernel, the initramfs with the agent and the
workloads, the user's compiled workloads and their sources, the manifest, the caches kept
beside it). `image_bundle` lists them with their SHA-256; a worker `materialize`s the
bundle into its own image cache: files it already has are used if their hash matches,
the others are written from the blobs shipped to it, each checked by its hash first. A
worker never uses a file whose hash differs from the coordinator's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmfault.errors import ImageError
from vmfault.files import write_atomically

__all__ = [
    "BLOB_PREFIX",
    "BundleFile",
    "ImageBundle",
    "blob_key",
    "image_bundle",
    "materialize",
    "materialize_file",
    "read_blobs",
]

BLOB_PREFIX = "vmfault-blob-"
"""The start of a blob's key: the rest is the SHA-256 of its bytes."""
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: its path under the image root, SHA-256 (hex), size and mode."""

    path: str
    sha256: str
    size_bytes: int
    mode: int


@dataclass(frozen=True)
class ImageBundle:
    """A guest image as content: its hash (the directory name in every image cache) and
    its files."""

    image_hash: str
    files: tuple[BundleFile, ...]

    @property
    def size_bytes(self) -> int:
        """The bytes of every file together."""
        return sum(item.size_bytes for item in self.files)

    def blob_keys(self) -> tuple[str, ...]:
        """The key of every distinct blob of the bundle."""
        return tuple(dict.fromkeys(blob_key(item.sha256) for item in self.files))


def blob_key(sha256: str) -> str:
    """The key of the blob whose bytes have this SHA-256."""
    return BLOB_PREFIX + sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def image_bundle(root: Path, image_hash: str) -> ImageBundle:
    """Every regular file under `root` (hidden and partial files left out), hashed."""
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        stat = path.stat()
        files.append(
            BundleFile(relative.as_posix(), _sha256_file(path), stat.st_size, stat.st_mode & 0o777)
        )
    return ImageBundle(image_hash, tuple(files))


def read_blobs(root: Path, bundle: ImageBundle) -> dict[str, bytes]:
    """The blobs of `bundle`, read from the image at `root` and checked by their hash
    (ImageError if a file changed since the bundle was made)."""
    blobs: dict[str, bytes] = {}
    for item in bundle.files:
        key = blob_key(item.sha256)
        if key in blobs:
            continue
        data = (root / item.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise ImageError(
                f"{root / item.path} changed while the campaign was starting",
                hint="build the image again and restart the campaign",
            )
        blobs[key] = data
    return blobs


def _matches(path: Path, item: BundleFile) -> bool:
    try:
        return path.stat().st_size == item.size_bytes and _sha256_file(path) == item.sha256
    except OSError:
        return False


def materialize_file(path: Path, item: BundleFile, blobs: Mapping[str, bytes] | None) -> bool:
    """Make `path` hold `item`: kept if its hash matches, else written from its blob
    (checked by its hash first). Whether it was written; ImageError without the blob or
    with a blob whose hash differs."""
    if _matches(path, item):
        return False
    data = None if blobs is None else blobs.get(blob_key(item.sha256))
    if data is None:
        raise ImageError(
            f"{path} is missing or differs from the coordinator's (sha256 {item.sha256[:12]})",
            hint="the coordinator ships the image to Dask workers that lack it",
        )
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise ImageError(f"the blob shipped for {path} does not have its sha256 {item.sha256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    os.chmod(path, item.mode)  # noqa: PTH101 (the mode of a file written atomically)
    return True


def materialize(bundle: ImageBundle, blobs: Mapping[str, bytes] | None, cache_root: Path) -> Path:
    """The image of `bundle` in the image cache under `cache_root`, every file checked by
    its hash, those missing or different written from `blobs`; its root directory.

    Workers of one host may do this at once: each file is written whole by a rename.
    """
    root = cache_root / "images" / bundle.image_hash
    for item in bundle.files:
        materialize_file(root / item.path, item, blobs)
    return root
