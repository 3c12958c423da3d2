"""The secret guard, and the SQL the database play runs (each query written once)."""

from __future__ import annotations

import json

import evidence
import pytest
from samples import REQUEST_ID, SECRETS, read


# --- the secret guard ---------------------------------------------------------------------------
def files() -> dict[str, str]:
    return {
        "service_status.txt": "Active: active (running)\n",
        "chat_call.json": json.dumps(
            {"request": {"headers": {"Authorization": "Bearer <redacted>"}}}
        ),
        "figures.json": "{}",
    }


def test_clean_files_pass_unchanged() -> None:
    guard = evidence.withhold(files(), SECRETS)
    assert guard["withheld"] == []
    assert guard["files"] == files()
    assert (guard["secrets_searched"], guard["files_searched"]) == (3, 3)


def test_a_file_with_a_secret_is_withheld() -> None:
    leaked = {**files(), "service_status.txt": f"DATABASE_URL=postgresql://u:{SECRETS[2]}@db/x\n"}
    guard = evidence.withhold(leaked, SECRETS)
    assert guard["withheld"] == ["service_status.txt"]
    assert guard["files"]["service_status.txt"] == evidence.WITHHELD
    assert SECRETS[2] not in json.dumps(guard["files"])
    assert guard["files"]["chat_call.json"] == files()["chat_call.json"]


def test_a_secret_escaped_in_json_is_found() -> None:
    secret = 'pa"ss\\word'
    leaked = {**files(), "figures.json": json.dumps({"env": secret})}
    assert secret not in leaked["figures.json"]
    assert evidence.withhold(leaked, [secret])["withheld"] == ["figures.json"]


def test_empty_and_missing_secrets_are_skipped() -> None:
    guard = evidence.withhold(files(), ["", None, SECRETS[0], SECRETS[0]])
    assert guard["withheld"] == []
    assert guard["secrets_searched"] == 1


# --- the SQL ------------------------------------------------------------------------------------
def queries(
    request_id: str = REQUEST_ID, roles: tuple[str, ...] = ("litellm_user", "litellm_owner")
):
    return evidence.queries(request_id, "litellm_db", "litellm_user", list(roles), 5)


def test_reports_print_the_queries_the_figures_are_computed_from() -> None:
    built = queries()
    assert sorted(built["reports"]) == [
        "db_security",
        "join_check",
        "partitions",
        "requests_head",
        "responses_head",
    ]
    for report, named in evidence.report_queries(
        REQUEST_ID, "litellm_db", "litellm_user", ["litellm_user", "litellm_owner"], 5
    ).items():
        assert built["reports"][report] == [f"--command={sql};" for sql in named.values()]
        for name, sql in named.items():
            assert (
                f"'{name}', (SELECT coalesce(json_agg(report_row), '[]'::json) FROM (\n{sql}\n)"
                in (built["rows"])
            )


def test_the_captured_rows_answer_every_query() -> None:
    """data/psql_rows.json is psql's answer to queries()["rows"]: same names."""
    names = {name for named in evidence.QUERIES.values() for name in named}
    assert set(json.loads(read("psql_rows.json"))) == names


def test_the_call_is_looked_for_by_its_request_id() -> None:
    built = queries()
    assert built["request_id"] == REQUEST_ID
    assert built["row_wait"].endswith(f"WHERE q.request_id = '{REQUEST_ID}'")
    assert f"OR request_id = '{REQUEST_ID}'" in built["reports"]["requests_head"][0]
    assert "LIMIT 5)" in built["reports"]["join_check"][0]


@pytest.mark.parametrize("request_id", ["x' OR '1'='1", "", "a b", "x" * 256, "id;DROP"])
def test_a_request_id_that_is_not_a_plain_token_matches_nothing(request_id: str) -> None:
    built = queries(request_id)
    assert built["request_id"] == ""
    assert built["row_wait"].endswith("WHERE q.request_id = ''")
    assert "OR '1'='1" not in built["rows"]


def test_names_are_quoted_as_literals() -> None:
    built = queries(roles=("litellm_user", "o'brien"))
    assert "unnest(ARRAY['litellm_user', 'o''brien']::text[])" in built["rows"]
    assert "a.datname = 'litellm_db' AND a.usename = 'litellm_user'" in built["rows"]
    with pytest.raises(ValueError, match="NUL"):
        evidence.sql_literal("a\x00b")


def test_no_password_role_is_still_valid_sql() -> None:
    assert "unnest(ARRAY[]::text[])" in queries(roles=())["rows"]


def test_the_filters_ansible_loads() -> None:
    assert sorted(evidence.FilterModule().filters()) == [
        "evidence_backup_wal",
        "evidence_journal_since",
        "evidence_judge",
        "evidence_measure",
        "evidence_queries",
        "evidence_systemctl_show",
        "evidence_verdict",
        "evidence_withhold",
    ]
