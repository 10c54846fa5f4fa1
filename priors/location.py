"""Where a prior store lives: a local folder, or any URL that fsspec opens (s3://, gs://, az://, ...).

One interface for both, so that creating, resuming, removing and measuring a store, and the failure markers
beside it, work the same on a file system and on an object store (where nothing can be renamed). Credentials
come from the file system's own configuration: for s3:// the standard AWS environment and config files
(AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL for S3-compatible servers, ...). None is ever written into a
store, and a location prints as the URL it was given, less any user or password in it.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import AisdiffError

# what a remote URL needs installed, beyond fsspec (a dask dependency)
PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                     "abfs": "adlfs"}
_URL = re.compile(r"^(?P<protocol>[a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def is_url(where: str | os.PathLike) -> bool:
    """Whether `where` names a store by URL (`s3://bucket/run.zarr`) rather than a local path."""
    return bool(_URL.match(os.fspath(where))) and not os.fspath(where).startswith("file://")


class Location:
    """A store's place: `fs` (an fsspec file system) and `path` on it; `url` is what the user gave."""

    def __init__(self, where: str | os.PathLike | Location) -> None:
        if isinstance(where, Location):
            self.url, self.fs, self.path, self.remote = where.url, where.fs, where.path, where.remote
            return
        text = os.fspath(where)
        self.remote = is_url(text)
        if self.remote:
            self.url = text.rstrip("/")
            self.fs, self.path = _remote_fs(self.url)
        else:
            from fsspec.implementations.local import LocalFileSystem

            local = Path(text.removeprefix("file://")).expanduser()
            self.url, self.fs, self.path = str(local), LocalFileSystem(), str(local.absolute())

    # -- naming ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The last part of the path (`train.zarr`)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, name: str) -> Location:
        """The location named `name` beside this one (same folder or prefix)."""
        parent = self.url.rsplit("/", 1)[0] if "/" in self.url else "."
        return Location(f"{parent}/{name}" if self.remote else Path(self.url).with_name(name))

    def key(self, key: str) -> str:
        """The file system path of `key` inside this location (`zarr.json`, `prior/c/0/0/0`)."""
        return f"{self.path.rstrip('/')}/{key}"

    def __str__(self) -> str:
        return _shown(self.url)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if self.remote:
            raise TypeError(f"{self} is not on the local file system")
        return self.url

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, os.PathLike)) and not isinstance(other, Location):
            other = Location(other)
        return isinstance(other, Location) and (self.remote, self.path) == (other.remote, other.path)

    def __hash__(self) -> int:
        return hash((self.remote, self.path))

    # -- reading and writing -----------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether anything is stored here (a folder, a file, or objects under this prefix)."""
        self._forget_listings()
        return bool(self.fs.exists(self.path))

    def has(self, key: str) -> bool:
        self._forget_listings()
        return bool(self.fs.isfile(self.key(key)))

    def _forget_listings(self) -> None:
        """Drop the listings an object-store client keeps (s3fs does): other processes write here too."""
        if self.remote:
            self.fs.invalidate_cache()

    def read_text(self) -> str:
        return self.fs.cat_file(self.path).decode("utf-8")

    def write_text(self, text: str) -> None:
        """Write this location as one small file (whole: a reader never sees half of it)."""
        if self.remote:
            self.fs.pipe_file(self.path, text.encode("utf-8"))
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # (a full disk: no empty file left behind)
            raise

    def remove(self) -> None:
        """Remove everything stored here (nothing if nothing is)."""
        if not self.exists():
            return
        if self.remote:
            self.fs.rm(self.path, recursive=True)
        elif Path(self.path).is_dir():
            shutil.rmtree(self.path)
        else:
            Path(self.path).unlink()

    def names_beside(self, prefix: str) -> list[str]:
        """Names of the entries beside this location that start with `prefix`."""
        parent = self.path.rstrip("/").rsplit("/", 1)[0]
        self._forget_listings()
        try:
            listed = self.fs.ls(parent, detail=False)
        except FileNotFoundError:
            return []
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in listed]
        return sorted(name for name in names if name.startswith(prefix))

    def size_bytes(self, key: str | None = None) -> int:
        """Bytes stored under this location (or under `key` in it)."""
        path = self.path if key is None else self.key(key)
        self._forget_listings()
        return int(self.fs.du(path, total=True)) if self.fs.exists(path) else 0

    def free_bytes(self) -> int | None:
        """Free bytes on the file system that holds (or will hold) this location; None where the store cannot
        say (object stores)."""
        if self.remote:
            return None
        folder = Path(self.path)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def zarr_store(self, read_only: bool) -> Any:
        """The Zarr v3 store of this location."""
        from zarr.storage import FsspecStore, LocalStore

        if not self.remote:
            return LocalStore(self.path, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only)


Where = str | os.PathLike | Location  # what the store's functions accept


def _remote_fs(url: str):
    """The fsspec file system and path of a URL (a missing protocol package: an AisdiffError, the fix)."""
    import fsspec

    protocol = _URL.match(url).group("protocol").lower()
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        package = PROTOCOL_PACKAGES.get(protocol)
        fix = ("install s3fs (`pip install aisdiff[s3]`)" if package == "s3fs" else f"install {package}"
               if package else "use a local path or a URL whose protocol fsspec knows (s3://, gs://, ...)")
        raise AisdiffError(f"{_shown(url)}: cannot open {protocol}:// URLs ({exc}); {fix}.") from None


def _shown(url: str) -> str:
    """A URL as messages show it: without any user or password in it."""
    return _USERINFO.sub(r"\1", url)
