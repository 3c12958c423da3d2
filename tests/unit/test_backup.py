"""Backups: the evidence's "Backups younger than their schedule allows" criterion and its
figures (roles/evidence/filter_plugins/evidence.py), and the restore drill's comparison
(roles/pgbackrest/filter_plugins/restore_drill.py). The pgBackRest output in data/ was
captured on the lab's repository host (pgBackRest 2.55, one full backup)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import evidence
import pytest
from samples import BACKUP_PERIODS, BACKUP_STOPPED, Deployment, backup_facts, read

sys.path.insert(
    0, str(Path(__file__).resolve().parents[2] / "roles" / "pgbackrest" / "filter_plugins")
)
import restore_drill

NAME = "Backups younger than their schedule allows"
HOUR = 3600


def criterion(deployment: Deployment, guard: Any) -> dict[str, Any]:
    criteria = evidence.judge(evidence.measure(*deployment.measure_args()), guard)
    return {c["name"]: c for c in criteria}[NAME]


def with_backup(**changes: Any) -> Deployment:
    deployment = Deployment()
    deployment.backup.update(changes)
    return deployment


def info_with(change) -> str:
    info = json.loads(read("pgbackrest_info.json"))
    change(info[0])
    return json.dumps(info)


# --- figures ----------------------------------------------------------------------------------
def test_figures_of_a_fresh_backup() -> None:
    figures = evidence.backup_figures(backup_facts(age_s=600), BACKUP_PERIODS)
    assert figures["stanza"] == "litellm"
    assert (figures["status_code"], figures["status_message"]) == (0, "ok")
    assert figures["backups"] == 1
    assert figures["newest_full"] == {
        "label": "20261130-154505F",
        "type": "full",
        "stopped": BACKUP_STOPPED,
        "age_s": 600,
    }
    assert figures["newest"]["label"] == "20261130-154505F"
    # The WAL segment's time is the newest of its files in the listing.
    assert figures["newest_wal"] == {
        "segment": "000000010000000000000003",
        "archived": BACKUP_STOPPED,
        "age_s": 600,
    }
    assert figures["limits"]["full_max_age_s"] == (168 + 2) * HOUR
    assert figures["limits"]["backup_max_age_s"] == (24 + 2) * HOUR


def test_the_newest_wal_segment_is_located_from_info() -> None:
    assert evidence.backup_wal(read("pgbackrest_info.json"), "litellm") == {
        "path": "archive/litellm/17-1/0000000100000000",
        "filter": "^000000010000000000000003",
        "segment": "000000010000000000000003",
    }


@pytest.mark.parametrize("info", ["", "not json", "[]", '[{"archive": []}]'])
def test_no_wal_segment_without_an_archive(info: str) -> None:
    assert evidence.backup_wal(info, "litellm")["path"] == ""


def test_a_malformed_segment_name_is_not_used_in_a_path() -> None:
    info = info_with(lambda s: s["archive"][0].update({"max": "../../etc"}))
    assert evidence.backup_wal(info, "litellm")["path"] == ""


# --- the criterion ------------------------------------------------------------------------------
def test_a_fresh_backup_passes(guard) -> None:
    judged = criterion(Deployment(), guard)
    assert judged["passed"], judged["why"]
    assert "newest full 20261130-154505F 0.2 h old (limit 170.0 h)" in judged["figure"]
    assert judged["source"] == "backup_info.txt"


def test_a_backup_older_than_the_daily_schedule_allows_fails(guard) -> None:
    judged = criterion(with_backup(now=str(BACKUP_STOPPED + 27 * HOUR)), guard)
    assert not judged["passed"]
    assert judged["why"] == [
        "the newest backup 20261130-154505F is 27.0 h old, the schedule allows 26.0 h"
    ]


def test_a_full_backup_older_than_the_weekly_schedule_allows_fails(guard) -> None:
    deployment = with_backup(now=str(BACKUP_STOPPED + 171 * HOUR))
    why = criterion(deployment, guard)["why"]
    assert (
        "the newest full backup 20261130-154505F is 171.0 h old, the schedule allows 170.0 h" in why
    )


def test_a_recent_differential_does_not_excuse_an_old_full(guard) -> None:
    def add_diff(stanza: dict[str, Any]) -> None:
        diff = json.loads(json.dumps(stanza["backup"][0]))
        diff.update({"label": "20261130-154505F_20261207-010000D", "type": "diff"})
        diff["timestamp"] = {
            "start": BACKUP_STOPPED + 180 * HOUR,
            "stop": BACKUP_STOPPED + 180 * HOUR,
        }
        stanza["backup"].append(diff)

    deployment = with_backup(info_json=info_with(add_diff), now=str(BACKUP_STOPPED + 181 * HOUR))
    judged = criterion(deployment, guard)
    assert judged["why"] == [
        "the newest full backup 20261130-154505F is 181.0 h old, the schedule allows 170.0 h"
    ]
    assert "newest 20261130-154505F_20261207-010000D 1.0 h old" in judged["figure"]


def test_no_backup_at_all_fails(guard) -> None:
    judged = criterion(with_backup(info_json=info_with(lambda s: s.update({"backup": []}))), guard)
    assert judged["why"] == ["no full backup in the repository"]


def test_a_stanza_in_error_fails(guard) -> None:
    def broken(stanza: dict[str, Any]) -> None:
        stanza["status"] = {"code": 1, "message": "missing stanza path"}

    why = criterion(with_backup(info_json=info_with(broken)), guard)["why"]
    assert "stanza litellm is not ok: missing stanza path" in why


def test_a_backup_host_that_did_not_report_fails(guard) -> None:
    deployment = Deployment()
    deployment.backup = {}
    assert criterion(deployment, guard)["why"] == [
        "the backup play did not report (host unreachable or play not run)"
    ]


def test_a_collection_error_is_named(guard) -> None:
    judged = criterion(
        with_backup(error="Read pgbackrest info as text: non-zero return code"), guard
    )
    assert judged["why"][0].startswith("the backup figures are incomplete: Read pgbackrest info")


# --- the restore drill's comparison ---------------------------------------------------------------
SIDE = {
    "requests_rows": 12,
    "requests_md5": "0f343b0931126a20f133d67c2b018a3b",
    "responses_rows": 12,
    "responses_md5": "9d5ed678fe57bcca610140957afab571",
    "newest_request": "2026-11-30 15:50:01.123456+00",
    "requests_after_target": 4,
    "orphan_responses": 0,
    "foreign_keys": 1,
}
RESTORE = {
    "stdout": "P00   INFO: repo1: restore backup set 20261130-154505F, recovery will start at"
    " 2026-11-30 15:45:05\nP00   INFO: restore command end: completed successfully",
    "delta": "0:00:02.504000",
}
START = {"seconds": "3.25"}


def query(**changes: Any) -> dict[str, Any]:
    return {"query_result": [{**SIDE, **changes}]}


def drill(source: dict[str, Any], restored: dict[str, Any]) -> dict[str, Any]:
    return restore_drill.judge(source, restored, RESTORE, START)


def test_identical_sides_pass() -> None:
    judged = drill(query(), query(requests_after_target=0))
    assert judged["problems"] == []
    assert judged["result"] == "PASS"
    assert judged["label"] == "20261130-154505F"
    assert (judged["restore_seconds"], judged["recovery_seconds"], judged["total_seconds"]) == (
        2.504,
        3.25,
        5.754,
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"requests_rows": 11}, "requests rows differ: source 12, restored 11"),
        (
            {"responses_md5": "x"},
            "responses checksum differ: source 9d5ed678fe57bcca610140957afab571, restored x",
        ),
        ({"requests_after_target": 2}, "2 requests after the target in the restored cluster"),
        ({"orphan_responses": 1}, "1 responses without their request in the restored cluster"),
        (
            {"foreign_keys": 0},
            "no validated foreign key from responses to requests in the restored cluster",
        ),
    ],
)
def test_each_difference_fails_the_drill(change: dict[str, Any], problem: str) -> None:
    judged = drill(query(), query(**{"requests_after_target": 0, **change}))
    assert judged["problems"] == [problem]
    assert judged["result"] == "FAIL"


def test_a_side_without_figures_fails() -> None:
    assert drill(query(), {})["problems"] == ["no figures from the restored cluster"]
    assert drill({}, query(requests_after_target=0))["problems"] == ["no figures from the source"]


def test_a_duration_from_a_command_delta() -> None:
    assert (
        restore_drill.judge(query(), query(), RESTORE, {"delta": "0:01:02.5"})["recovery_seconds"]
        == 62.5
    )


def test_a_restore_that_names_no_backup_set_fails() -> None:
    judged = restore_drill.judge(query(), query(requests_after_target=0), {"stdout": ""}, START)
    assert judged["problems"] == ["pgbackrest restore named no backup set"]
    assert judged["restore_seconds"] is None and judged["total_seconds"] is None


@pytest.mark.parametrize(
    ("output", "label"),
    [
        (
            "INFO: repo1: restore backup set 20261130-154505F_20261201-010003D, recovery",
            "20261130-154505F_20261201-010003D",
        ),
        ("INFO: repo1: restore backup set 20261130-154505F, recovery", "20261130-154505F"),
        ("nothing", ""),
    ],
)
def test_backup_label(output: str, label: str) -> None:
    assert restore_drill.backup_label(output) == label
