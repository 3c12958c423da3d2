"""The restore drill's judgement: does the restored cluster hold exactly the source's rows?

The drill's tasks (tasks/restore_drill.yml) run the same query (``DRILL_SQL`` rendered in
vars/main.yml) against the live cluster and the restored one, both limited to the recovery
target, and hand the results here. Everything decided about them is decided in plain
Python so that tests/unit/ can test it without hosts.

Filters (Jinja name -> function):

- ``pgbackrest_drill_judge``: the comparison, its problems (empty = the drill passed), the
  backup label and the durations
- ``pgbackrest_backup_label``: the backup set a ``pgbackrest restore`` used, from its output
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# What both sides must agree on, with the words the report uses for them.
COMPARED = (
    ("requests_rows", "requests rows"),
    ("requests_md5", "requests checksum"),
    ("responses_rows", "responses rows"),
    ("responses_md5", "responses checksum"),
)

_LABEL = re.compile(r"restore backup set (\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?)")
_DELTA = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def backup_label(output: Any) -> str:
    """The backup set named in ``pgbackrest restore``'s info output, or ''."""
    match = _LABEL.search(str(output or ""))
    return match.group(1) if match else ""


def seconds(delta: Any) -> float | None:
    """Seconds of a command result's ``delta`` ('0:01:02.500000'), None when absent."""
    match = _DELTA.match(str(delta or "").strip())
    if not match:
        return None
    hours, minutes, secs = match.groups()
    return round(int(hours) * 3600 + int(minutes) * 60 + float(secs), 3)


def _duration(result: Mapping[str, Any] | None) -> float | None:
    """A step's seconds: its ``seconds`` (measured by the tasks), else its ``delta``."""
    result = result or {}
    if result.get("seconds") not in (None, ""):
        return round(float(result["seconds"]), 3)
    return seconds(result.get("delta"))


def _row(result: Mapping[str, Any] | None) -> dict[str, Any]:
    rows = (result or {}).get("query_result") or []
    return dict(rows[0]) if rows else {}


def judge(
    source: Mapping[str, Any] | None,
    restored: Mapping[str, Any] | None,
    restore: Mapping[str, Any] | None = None,
    start: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The filter ``pgbackrest_drill_judge``.

    - source, restored: the postgresql_query results of the drill's query on each side
    - restore: the command result of ``pgbackrest restore``; start: the recovery's duration
      ({seconds: ...}: start, replay to the target, promotion) or a command result (delta)

    Problems (any one fails the drill): a side without figures; counts or checksums that
    differ; rows after the target in the restored cluster; responses without their request
    there; no validated foreign key from responses to requests there; no backup label.
    """
    src, dst = _row(source), _row(restored)
    problems = []
    if not src:
        problems.append("no figures from the source")
    if not dst:
        problems.append("no figures from the restored cluster")
    if src and dst:
        for key, words in COMPARED:
            if str(src.get(key)) != str(dst.get(key)):
                problems.append(f"{words} differ: source {src.get(key)}, restored {dst.get(key)}")
        if dst.get("requests_after_target") != 0:
            problems.append(
                f"{dst.get('requests_after_target')} requests after the target"
                " in the restored cluster"
            )
        if dst.get("orphan_responses") != 0:
            problems.append(
                f"{dst.get('orphan_responses')} responses without their request"
                " in the restored cluster"
            )
        if not dst.get("foreign_keys"):
            problems.append(
                "no validated foreign key from responses to requests in the restored cluster"
            )
    label = backup_label((restore or {}).get("stdout", "")) + backup_label(
        (restore or {}).get("stderr", "")
    )
    if not label:
        problems.append("pgbackrest restore named no backup set")
    restore_s, start_s = _duration(restore), _duration(start)
    return {
        "source": src,
        "restored": dst,
        "label": label,
        "restore_seconds": restore_s,
        "recovery_seconds": start_s,
        "total_seconds": (
            round(restore_s + start_s, 3) if restore_s is not None and start_s is not None else None
        ),
        "problems": problems,
        "result": "PASS" if not problems else "FAIL",
    }


class FilterModule:
    """Ansible's entry point for the role's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "pgbackrest_drill_judge": judge,
            "pgbackrest_backup_label": backup_label,
        }
