"""Durable on-disk overflow for exchanges the database could not take (yet).

Layout, one directory shared by all workers on a host:
  ``active-<pid>.jsonl``          the file this worker appends to (one JSON exchange per line)
  ``pending-<pid>-<seq>.jsonl``   sealed files waiting for replay, oldest first

Appends are fsync'd per batch, so an acknowledged spool write survives a crash. Replay
seals the active file first (rename is atomic), so appends never race with a replay.
Files of workers that no longer run are adopted at startup; the rename decides which
worker wins when several look at the same orphan.
  ``rejected-<pid>.jsonl``        dead letters: what could not be logged as it was, with
                                  the reason (never replayed; for an operator to inspect)
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(?:active-(?P<apid>\d+)|pending-(?P<ppid>\d+)-(?P<seq>\d+))\.jsonl$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except FileNotFoundError:  # adopted by another worker meanwhile: sorts first, skipped
        return 0, path.name


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


class Spool:
    def __init__(self, directory: Path, pid: int | None = None):
        self.directory = Path(directory)
        self.pid = pid or os.getpid()
        self.active = self.directory / f"active-{self.pid}.jsonl"
        self._lock = threading.Lock()
        self._seq = 0
        self.dead_letters = self.directory / f"rejected-{self.pid}.jsonl"
        # (file, line number) of unreadable lines already handed over, so a replay that
        # an outage interrupts does not hand them over again when it resumes.
        self._handed_over: set[tuple[str, int]] = set()
        self.backlog = 0  # exchanges on disk, not yet replayed

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Our own pid here means a previous process that had our pid; it is gone.
        self._adopt_orphans(include_own=True)
        self.backlog = sum(_count_lines(path) for path in self._pending_files())
        if self.active.exists():
            self.backlog += _count_lines(self.active)

    def _next_pending(self) -> Path:
        self._seq += 1
        return self.directory / f"pending-{self.pid}-{self._seq:012d}.jsonl"

    def _adopt_orphans(self, include_own: bool = False) -> list[Path]:
        """Rename the files of workers that no longer run to pending files of ours;
        returns the new paths."""
        orphans = []
        for path in self.directory.glob("*.jsonl"):
            match = _FILE_RE.match(path.name)
            if not match:
                continue
            owner = int(match.group("apid") or match.group("ppid"))
            if (owner == self.pid and include_own) or (owner != self.pid and not _pid_alive(owner)):
                orphans.append(path)
        # Oldest first, so replay keeps the order in which exchanges were spooled.
        orphans.sort(key=_age)
        adopted = []
        for path in orphans:
            with self._lock:
                target = self._next_pending()
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another worker adopted it first
            log.info("spool: adopted %s", path.name)
            adopted.append(target)
        return adopted

    def adopt_orphans(self) -> int:
        """Take over the files of workers that stopped after this one started, and return
        how many exchanges they hold. A graceful reload (gunicorn HUP) starts the new
        workers before the old ones finish their streams and spool what the database
        would not take, so no startup sees those files."""
        lines = 0
        for path in self._adopt_orphans():
            lines += _count_lines(path)
        with self._lock:
            self.backlog += lines
        return lines

    def _pending_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"pending-{self.pid}-*.jsonl"))

    def append(self, lines: Sequence[bytes]) -> int:
        """Append already-serialized exchanges (one JSON document each, no newline)."""
        count = len(lines)
        if not count:
            return 0
        with self._lock:
            _append_synced(self.active, b"\n".join(lines) + b"\n")
            self.backlog += count
        return count

    def add_dead_letter(self, entry: bytes) -> None:
        """Append one dead letter (fsync'd: it is the only copy). Raises OSError."""
        with self._lock:
            _append_synced(self.dead_letters, entry + b"\n")

    def replay(
        self,
        write: Callable[[list[dict[str, Any]]], None],
        unreadable: Callable[[bytes, str], None],
        chunk: int = 1000,
    ) -> int:
        """Feed every spooled exchange to ``write`` in order; stop where ``write`` raises.

        ``write`` must be idempotent: a crash after it committed but before the file was
        removed replays the same exchanges again. A line that is not an exchange (a torn
        last line from a crash mid-append, or anything else) goes to ``unreadable`` with
        the reason, once, and never stops the replay.
        """
        with self._lock:
            if self.active.exists():
                os.rename(self.active, self._next_pending())
        replayed = 0
        for path in self._pending_files():
            batch: list[dict[str, Any]] = []
            lines = 0
            with path.open("rb") as handle:
                for line in handle:
                    lines += 1
                    exchange, problem = _parse_line(line)
                    if exchange is None:
                        if (path.name, lines) not in self._handed_over:
                            self._handed_over.add((path.name, lines))
                            log.warning("spool: unreadable line in %s: %s", path.name, problem)
                            unreadable(line.rstrip(b"\n"), problem)
                        continue
                    batch.append(exchange)
                    if len(batch) >= chunk:
                        write(batch)
                        replayed += len(batch)
                        batch = []
            if batch:
                write(batch)
                replayed += len(batch)
            path.unlink()
            with self._lock:
                self.backlog = max(0, self.backlog - lines)
        return replayed

    def has_backlog(self) -> bool:
        return self.backlog > 0


def _append_synced(path: Path, payload: bytes) -> None:
    """Append and fsync, so an acknowledged write survives a crash."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_line(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(exchange, "") or (None, why the line is not one)."""
    try:
        exchange = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(exchange, dict) or not isinstance(exchange.get("request_id"), str):
        return None, "not an exchange (no request_id)"
    return exchange, ""
