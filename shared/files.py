"""Files that are never half-written: atomic writes and versioned, checksummed JSON (hand-written plumbing).

Every file the book writes for later reading (token shards and their sidecars, manifests, tokenizers, checkpoints,
cached downloads, logs of state) goes through `atomic_write`: the bytes go to a temporary name in the same folder,
are flushed to disk, and only then renamed over the target. A crash at any moment leaves either the old file or the
new one, never a mixture. `write_versioned_json` / `read_versioned_json` add a format name, a version and a
checksum, so a reader tells "missing", "corrupt", "someone else's file" and "written by a newer version" apart, each
with one clear line that names the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


class FileFormatError(ValueError):
    """A file that is missing, corrupt, of a foreign format or of an unsupported version; the message names it."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function that writes a given temporary path) to `path` atomically.

    The temporary file sits in the target's folder (a rename across file systems is not atomic) and is fsynced
    before the rename, so after a power cut the name points at complete contents. It is removed on failure."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)               # mkstemp creates 0600; a shared dataset should stay readable
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def is_temporary(path: str | Path) -> bool:
    """True for a leftover of an interrupted `atomic_write` (safe to delete)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def json_checksum(payload: dict) -> str:
    """The checksum of a JSON object, independent of key order and formatting."""
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return sha256_hex(canonical.encode("utf-8"))


def write_versioned_json(path: str | Path, fmt: str, version: int, payload: dict, *, checksum: bool = True) -> dict:
    """Write {"format", "version", **payload, "sha256"} atomically; returns what was written."""
    record = {"format": fmt, "version": version, **payload}
    if checksum:
        record["sha256"] = json_checksum(record)
    atomic_write(path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def read_versioned_json(path: str | Path, fmt: str, version: int, *, kind: str = "file", checksum: bool = True,
                        missing: str | None = None) -> dict:
    """Read a file written by `write_versioned_json`; FileFormatError (one line, naming the file) when it is missing
    (`missing` replaces the default message), not JSON, of another format or version, or fails its checksum."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(missing or f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise FileFormatError(f"{path}: is a directory, not a {kind}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: corrupt {kind}, not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FileFormatError(f"{path}: not a {fmt} {kind} (format: {found!r})")
    if data.get("version") != version:
        newer = isinstance(data.get("version"), int) and data["version"] > version
        raise FileFormatError(f"{path}: {fmt} version {data.get('version')!r} is not supported; this code reads "
                              f"version {version}" + (" (the file is newer: update the code)" if newer else ""))
    if checksum and data.get("sha256") != json_checksum({k: v for k, v in data.items() if k != "sha256"}):
        raise FileFormatError(f"{path}: checksum mismatch, the {kind} was modified or damaged")
    return data
