"""Reading files that another process is writing, without ever breaking on what it is in the middle
of: an append-only JSON-lines file read incrementally (a half-written last line waits for its
newline; a file replaced or truncated is read again from the start; a file or directory that does
not exist yet is empty), and a whole JSON file re-read only when it changed (an unreadable version
keeps the last good one). Read-only: nothing here opens a file for writing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _strict(c: str) -> float:
    raise ValueError(f"{c} is not JSON")


def parse_line(line: bytes) -> dict | None:
    """A JSON object, or None for anything else (a damaged line, a bare value)."""
    try:
        rec = json.loads(line, parse_constant=_strict)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


class TailFile:
    """New records of an append-only JSON-lines file, one call at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.bad_lines = 0
        self._ino: int | None = None
        self._offset = 0
        self._rest = b""

    def _restart(self) -> None:
        self._ino, self._offset, self._rest = None, 0, b""

    def read(self) -> tuple[list[dict], bool]:
        """(records appended since the last call, whether the file started over: replaced,
        truncated or removed, so what was read before no longer holds)."""
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            started_over = self._ino is not None
            self._restart()
            return [], started_over
        with f:
            st = os.fstat(f.fileno())
            started_over = self._ino is not None and (st.st_ino != self._ino or st.st_size < self._offset)
            if started_over:
                self._restart()
            self._ino = st.st_ino
            if st.st_size == self._offset:
                return [], started_over
            f.seek(self._offset)
            data = f.read(st.st_size - self._offset)
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()  # b"" after a whole line; else a line still being written
        out = []
        for line in lines:
            if not line.strip():
                continue
            rec = parse_line(line)
            if rec is None:
                self.bad_lines += 1
            else:
                out.append(rec)
        return out, started_over


class JsonDoc:
    """A whole JSON file (config.json, track.json, ...), re-read when its inode, size or mtime change."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.value: Any = None
        self.error = ""
        self._stamp: tuple | None = None

    def read(self) -> bool:
        """Whether the value changed."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            changed = self._stamp is not None
            self._stamp, self.value = None, None
            return changed
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return False
        try:
            value = json.loads(self.path.read_bytes(), parse_constant=_strict)
        except (ValueError, UnicodeDecodeError, FileNotFoundError) as e:
            # Written in place and caught mid-write: keep the last good value, try again next time.
            self.error = f"{self.path}: {e}"
            return False
        self._stamp, self.value, self.error = stamp, value, ""
        return True
