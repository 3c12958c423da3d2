"""Partitions: the evidence's "Partitions made ahead, none older than the retention"
criterion (roles/evidence/filter_plugins/evidence.py). The rows in data/psql_rows.json were
captured from PostgreSQL 17 with pg_partman 5.2 keeping the two log tables by day, no
retention, checked at 2026-11-30 19:02 UTC: requests_p20261125 .. requests_p20261204 and the
same for responses, plus their default partitions."""

from __future__ import annotations

from typing import Any

import evidence
from samples import Deployment, with_rows

NAME = "Partitions made ahead, none older than the retention"
DAY = 86400


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
        "requests keeps 1 day(s) beyond its retention of 3 days: requests_p20261125",
        "responses keeps 1 day(s) beyond its retention of 3 days: responses_p20261125",
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
