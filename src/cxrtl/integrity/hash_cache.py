"""The on-disk hash cache: one JSON shard per image folder, entries keyed by file name, size and mtime."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..errors import CxrtlError

log = logging.getLogger(__name__)

HASH_VERSION = 2  # bump when the hashes or their entries change: older shards are then ignored


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hashes are cached: the ``dedup`` folder of :func:`cxrtl.data.cache.default_cache_dir`."""
    from ..data.cache import default_cache_dir  # lazy: it pulls in Pillow and tqdm, and the CLI imports us

    return default_cache_dir(cache_dir) / "dedup"


def _shard_file(root: Path, directory: str) -> Path:
    return root / (hashlib.sha1(directory.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json")


def _stat_key(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class HashCache:
    """Cache entries (JSON objects) of image files; ``root=None`` caches nothing on disk."""

    def __init__(self, root: Path | None):
        self.root = root
        self.shards: dict[str, dict] = {}
        self.dirty: set[str] = set()

    def _shard(self, directory: str) -> dict:
        if directory not in self.shards:
            entries: dict = {}
            if self.root is not None:
                try:
                    obj = json.loads(_shard_file(self.root, directory).read_text("utf-8"))
                    if (
                        isinstance(obj, dict)
                        and obj.get("version") == HASH_VERSION
                        and obj.get("directory") == directory
                        and isinstance(obj.get("entries"), dict)
                    ):
                        entries = obj["entries"]
                except (OSError, ValueError):
                    entries = {}  # missing or damaged cache: rebuilt, never trusted
            self.shards[directory] = entries
        return self.shards[directory]

    def get(self, path: str) -> dict | None:
        """The entry of ``path`` if it was stored for the file's current size and mtime."""
        directory, name = os.path.split(path)
        entry = self._shard(directory).get(name)
        key = _stat_key(path)
        if not entry or key is None or entry.get("stat") != key:
            return None
        return entry

    def put(self, path: str, fields: dict) -> None:
        """Store ``fields`` as the entry of ``path``, valid while its size and mtime stay the same."""
        directory, name = os.path.split(path)
        key = _stat_key(path)
        if key is None:
            return
        self._shard(directory)[name] = {"stat": key, **fields}
        self.dirty.add(directory)

    def save(self) -> None:
        """Write changed shards atomically; a cache that cannot be written only costs speed next time."""
        if self.root is None or not self.dirty:
            return
        from ..fsutil import write_json

        for directory in sorted(self.dirty):
            try:
                write_json(
                    _shard_file(self.root, directory),
                    {"version": HASH_VERSION, "directory": directory, "entries": self.shards[directory]},
                )
            except (CxrtlError, OSError) as exc:
                log.warning("dedup hash cache not saved: %s", exc)
                break
        self.dirty.clear()
