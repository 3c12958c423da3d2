"""Partitions: the evidence's "Partitions made ahead, none older than the retention"
criterion (roles/evidence/filter_plugins/evidence.py). The rows in data/psql_rows.json were
captured from PostgreSQL 17 with pg_partman 5.2 keeping the two log tables by day, no
retention, checked at 2026-11-30 19:02 UTC: requests_p20261125 .. requests_p20261204 and the
same for responses, plus their default partitions. (partition_sets' interval_seconds was
added to the query after the capture, with the value that query returns for "1 day".)
The weekly tests turn them into the weekly partitions pg_partman keeps with date_trunc
'week': Monday to Monday."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import evidence
from samples import Deployment, with_rows

NAME = "Partitions made ahead, none older than the retention"
DAY = 86400
WEEK = 7 * DAY


def criterion(change=None) -> dict[str, Any]:
    deployment = Deployment()
    if change:
        deployment.database = with_rows(deployment.database, change)
    figures = evidence.measure(*deployment.measure_args())
    return {c["name"]: c for c in evidence.judge(figures, {"secrets_searched": 1})}[NAME]


def retention(days: int):
    def change(rows: dict[str, Any]) -> None:
        for row in rows["partition_sets"]:
            row["retention"] = f"{days} days"
            row["retention_seconds"] = days * DAY

    return change


def test_both_tables_kept_by_partman_and_made_ahead_pass() -> None:
    found = criterion()
    assert found["passed"], found["why"]
    assert found["figure"] == (
        "requests: 10 daily partitions requests_p20261125 to requests_p20261204, 0.5 MiB,"
        " retention none (keep everything), about 0 rows in the default partition;"
        " responses: 10 daily partitions responses_p20261125 to responses_p20261204, 0.2 MiB,"
        " retention none (keep everything), about 0 rows in the default partition"
    )
    assert found["source"] == "partitions.txt"


def test_a_day_older_than_the_retention_fails_and_is_named() -> None:
    # Checked on 11-30 19:02 with 3 days kept: 11-25 ended 4 days 19 h ago, beyond the
    # retention plus a day's slack; 11-26 ended 3 days 19 h ago, within it.
    found = criterion(retention(3))
    assert not found["passed"]
    assert found["why"] == [
        "requests keeps 1 partition(s) beyond its retention of 3 days: requests_p20261125",
        "responses keeps 1 partition(s) beyond its retention of 3 days: responses_p20261125",
    ]


def test_days_within_the_retention_pass() -> None:
    assert criterion(retention(5))["passed"]


def test_a_table_pg_partman_does_not_keep_fails() -> None:
    def unregister(rows: dict[str, Any]) -> None:
        rows["partition_sets"] = [
            row for row in rows["partition_sets"] if row["parent_table"] != "public.requests"
        ]

    found = criterion(unregister)
    assert found["why"] == ["requests is not registered with pg_partman (run partitions.yml)"]


def test_partitions_not_made_ahead_fail() -> None:
    def behind(rows: dict[str, Any]) -> None:
        rows["partitions"] = [
            row
            for row in rows["partitions"]
            if row["partition"] < "requests_p20261201" or row["parent_table"] != "requests"
        ]

    found = criterion(behind)
    assert found["why"] == [
        "requests's newest partition requests_p20261130 ends 2026-12-01T00:00:00+00:00,"
        " less than a day ahead (is the maintenance timer running?)"
    ]


def test_unpartitioned_tables_fail() -> None:
    def plain(rows: dict[str, Any]) -> None:
        rows["partitions"] = []
        rows["partition_sets"] = []

    found = criterion(plain)
    assert found["why"] == [
        "requests is not partitioned (revision 0003 not applied?)",
        "responses is not partitioned (revision 0003 not applied?)",
    ]


def test_no_partition_rows_is_not_a_pass() -> None:
    def missing(rows: dict[str, Any]) -> None:
        del rows["partitions"]

    found = criterion(missing)
    assert found["why"] == ["the partition queries returned nothing (is pg_partman installed?)"]


def test_a_partition_that_is_not_one_utc_day_fails_and_is_named() -> None:
    # As pg_partman makes them in a session whose time zone is America/New_York: the day
    # begins at 05:00 UTC, so 5 hours of each day fall outside the partition named for it.
    def shifted(rows: dict[str, Any]) -> None:
        for row in rows["partitions"]:
            if row["partition"] == "responses_p20261204":
                row["range_from"] = "2026-12-04T05:00:00+00:00"
                row["range_to"] = "2026-12-05T05:00:00+00:00"

    found = criterion(shifted)
    assert found["why"] == [
        "responses has 1 partition(s) that are not one UTC day from midnight (made in another"
        " time zone?): responses_p20261204"
    ]


def weekly(mondays: list[str]):
    """Both tables kept weekly, with one partition from each of these Mondays (as
    pg_partman names and bounds them)."""

    def change(rows: dict[str, Any]) -> None:
        for row in rows["partition_sets"]:
            row["partition_interval"] = "7 days"
            row["interval_seconds"] = WEEK
        defaults = [row for row in rows["partitions"] if row["range_from"] is None]
        rows["partitions"] = defaults
        for table in ("requests", "responses"):
            for monday in mondays:
                start = date.fromisoformat(monday)
                end = start + timedelta(days=7)
                rows["partitions"].append(
                    {
                        "parent_table": table,
                        "partition": f"{table}_p{start:%Y%m%d}",
                        "range_from": f"{start}T00:00:00+00:00",
                        "range_to": f"{end}T00:00:00+00:00",
                        "bytes": 1048576,
                        "rows_estimated": 100,
                    }
                )

    return change


def test_weekly_partitions_from_monday_pass_and_say_weekly() -> None:
    found = criterion(weekly(["2026-11-16", "2026-11-23", "2026-11-30", "2026-12-07"]))
    assert found["passed"], found["why"]
    assert found["figure"].startswith(
        "requests: 4 weekly partitions requests_p20261116 to requests_p20261207, 4.0 MiB,"
    )


def test_a_weekly_partition_that_does_not_start_on_monday_fails_and_is_named() -> None:
    # As pg_partman makes weeks without date_trunc 'week': from the day it was registered.
    found = criterion(weekly(["2026-11-30", "2026-12-08"]))
    assert not found["passed"]
    assert found["why"] == [
        f"{table} has 1 partition(s) that are not one UTC week from Monday midnight (made in"
        f" another time zone?): {table}_p20261208"
        for table in ("requests", "responses")
    ]


def test_a_week_beyond_the_retention_fails_once_its_end_is() -> None:
    # Checked on 11-30 19:02 with 10 days kept: the week of 11-09 ended 11-16, 14 days
    # ago, beyond 10 days and a day's slack; the week of 11-16 ended 7 days ago.
    def kept_ten_days(rows: dict[str, Any]) -> None:
        weekly(["2026-11-09", "2026-11-16", "2026-11-23", "2026-11-30", "2026-12-07"])(rows)
        retention(10)(rows)

    found = criterion(kept_ten_days)
    assert found["why"] == [
        f"{table} keeps 1 partition(s) beyond its retention of 10 days: {table}_p20261109"
        for table in ("requests", "responses")
    ]
