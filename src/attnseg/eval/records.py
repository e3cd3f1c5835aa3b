"""Crash-safe files of a run folder: atomic whole-file writes and append-only per-image record logs."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnseg.errors import BadConfigError
from attnseg.io import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401 — their home is io


@dataclass(frozen=True)
class ImageRecord:
    """What eval keeps of one scored image: enough to re-score it at any τ of the grid, never its score maps."""

    id: str
    ids: tuple[int, ...]  # the eval ids it was prompted with
    tau: float | None  # the τ its confusion was labelled with; None: argmax, grid only, or nothing prompted
    conf: (
        tuple[int, ...] | None
    )  # sparse confusion [row, col, count, ...]; None where only the grid was asked
    grid: tuple[tuple[int, ...], ...] | None = None  # one sparse confusion per τ of the grid (τ searches)
    sec: float = 0.0  # seconds of segmentation, the batch's time shared among its images
    diag: Mapping[str, float] = field(default_factory=dict)  # the segmentor's per-image scalar diagnostics
    present: tuple[int, ...] | None = None  # eval ids a presence step kept; None: no presence step ran
    presence_scores: Mapping[str, float] = field(default_factory=dict)  # eval id → that step's score

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (fields that are None or empty are left out)."""
        out: dict[str, Any] = {"id": self.id, "ids": list(self.ids), "tau": self.tau}
        if self.conf is not None:
            out["conf"] = list(self.conf)
        if self.grid is not None:
            out["grid"] = [list(g) for g in self.grid]
        out["sec"] = self.sec
        if self.diag:
            out["diag"] = dict(self.diag)
        if self.present is not None:
            out["present"] = list(self.present)
            out["presence_scores"] = dict(self.presence_scores)
        return out

    @classmethod
    def from_json(cls, rec: Mapping[str, Any], where: str) -> ImageRecord:
        """A record read back from a log; a malformed one names its log and asks for a new run folder."""
        try:
            grid = rec.get("grid")
            return cls(
                id=str(rec["id"]),
                ids=tuple(int(i) for i in rec["ids"]),
                tau=None if rec.get("tau") is None else float(rec["tau"]),
                conf=None if rec.get("conf") is None else tuple(int(v) for v in rec["conf"]),
                grid=None if grid is None else tuple(tuple(int(v) for v in g) for g in grid),
                sec=float(rec.get("sec", 0.0)),
                diag={str(k): float(v) for k, v in rec.get("diag", {}).items()},
                present=None if rec.get("present") is None else tuple(int(i) for i in rec["present"]),
                presence_scores={str(k): float(v) for k, v in rec.get("presence_scores", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadConfigError(
                f"{where} holds a record that is not an attnseg eval image record; use a new --out"
            ) from None


def _payload(rec: dict[str, Any]) -> bytes:
    """The canonical bytes a record's checksum covers (the record without its crc field)."""
    body = {k: v for k, v in rec.items() if k != "crc"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_record(rec: dict[str, Any]) -> bytes:
    """One JSON line with a CRC-32 of its content, so that a torn or garbled line is recognised."""
    payload = _payload(rec)
    crc = f"{zlib.crc32(payload) & 0xFFFFFFFF:08x}"
    return payload[:-1] + b',"crc":"' + crc.encode() + b'"}\n'


def decode_record(line: bytes) -> dict[str, Any] | None:
    """The record of one line, or None when the line is incomplete or fails its checksum."""
    if not line.endswith(b"\n"):
        return None
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or "crc" not in rec:
        return None
    if f"{zlib.crc32(_payload(rec)) & 0xFFFFFFFF:08x}" != rec["crc"]:
        return None
    rec.pop("crc")
    return rec


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Every valid record of a log, and the byte length of its valid prefix (where a torn tail starts)."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos : end + 1]
        rec = decode_record(line)
        if rec is None:
            break  # a torn line can only be the last one written; nothing after it is trusted
        records.append(rec)
        pos += len(line)
        good = pos
    return records, good


class RecordLog:
    """An append-only JSON-lines log owned by one process: each record is one write, flushed and fsynced."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating) the log, take its lock, and cut a torn tail left by a killed run."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        records, good = read_records(self.path)
        if self.path.exists() and self.path.stat().st_size != good:
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        self.records = records
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record durably."""
        data = encode_record(rec)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.records.append(rec)

    def close(self) -> None:
        """Close the log and release its lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock(path: Path) -> int:
    """Hold an exclusive lock on path for this process (released by the kernel even on kill -9)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: go on without a lock
        return fd
    except OSError:
        os.close(fd)
        raise BadConfigError(
            f"another attnseg eval is writing {path.with_suffix('')}; wait for it to finish, "
            "or give this run its own --out"
        ) from None
    return fd


def iter_logs(folder: str | Path, prefix: str) -> Iterator[Path]:
    """The record logs of one phase in a run folder, written by any process of any earlier launch."""
    folder = Path(folder)
    if folder.is_dir():
        yield from sorted(folder.glob(f"{prefix}-r*of*.jsonl"))
