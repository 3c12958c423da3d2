"""The acceptance criteria: PASS on a healthy deployment, FAIL with a clear reason otherwise.

The names and their order are those molecule/default/tests/test_evidence.py checks.
"""

from __future__ import annotations

from typing import Any

import evidence
import pytest
from samples import REQUEST_ID, read, with_rows

CRITERIA = [
    "Service running",
    "Database connectivity (SCRAM, TLS)",
    "API call 200",
    "Request logged",
    "Response logged",
    "Request/response integrity",
    "No secret in the bundle",
]


def judged(gateway: Any, database: Any, guard: Any) -> dict[str, dict[str, Any]]:
    criteria = evidence.judge(evidence.measure(gateway, database), guard)
    assert [c["name"] for c in criteria] == CRITERIA
    return {c["name"]: c for c in criteria}


def only_failure(gateway: Any, database: Any, guard: Any) -> dict[str, Any]:
    """The one criterion that fails (the test changed one thing)."""
    failed = [c for c in judged(gateway, database, guard).values() if not c["passed"]]
    assert len(failed) == 1, [c["name"] for c in failed]
    assert failed[0]["why"], "a failing criterion says why"
    return failed[0]


# --- a healthy deployment -----------------------------------------------------------------------
def test_every_criterion_passes_on_a_healthy_deployment(gateway, database, guard) -> None:
    criteria = judged(gateway, database, guard)
    assert {name: c["why"] for name, c in criteria.items() if not c["passed"]} == {}
    verdict = evidence.verdict(criteria.values())
    assert (verdict["result"], verdict["passed"], verdict["total"]) == ("PASS", 7, 7)


def test_figures_of_a_healthy_deployment(gateway, database, guard) -> None:
    criteria = judged(gateway, database, guard)
    assert criteria["Service running"]["figure"] == (
        "llm-gateway.service on molecule-gateway: active (running), up 120 s, main PID 812,"
        " restarts 0, memory 179.2 MiB"
    )
    assert criteria["Database connectivity (SCRAM, TLS)"]["figure"] == (
        "2 db_connected line(s) since start; server 17.7 (Debian 17.7-3.pgdg13+1), TLS true"
        " (TLSv1.3), pool_size 5 + max_overflow 5, user litellm_user; live sessions of"
        " litellm_user: 2/2 on TLS (TLSv1.3); SCRAM-SHA-256 verifiers 2/2, password_encryption"
        " scram-sha-256; pg_hba network rules for litellm_db: 2, not hostssl+scram-sha-256: 0"
    )
    assert criteria["API call 200"]["figure"] == (
        f"HTTP 200, X-Request-ID {REQUEST_ID}, X-Total-Latency 14.27ms, X-DB-Overhead 0.04ms,"
        " tokens 14 prompt + 7 completion = 21"
    )
    assert criteria["Request logged"]["figure"] == (
        f"1 row in requests for {REQUEST_ID} (id 7, model fake-gpt, status 200, key alias ?);"
        " 7 requests in total"
    )
    # cost is numeric(12,6): shown as a decimal, not 1.8e-05
    assert criteria["Response logged"]["figure"] == (
        "1 row in responses for it (id 6, status 200, latency 14.27 ms, tokens 21,"
        " cost 0.000018); 7 responses in total; found after 1 look(s)"
    )
    assert criteria["Request/response integrity"]["figure"] == (
        "0 requests without a response, 0 responses without a request; foreign key:"
        " FOREIGN KEY (request_id_fk) REFERENCES requests(id) ON DELETE CASCADE"
    )
    assert criteria["No secret in the bundle"]["figure"] == (
        "3 secret values searched in 8 files; withheld: none"
    )


def test_database_figures_keep_the_figures_json_keys(database) -> None:
    """molecule's test_evidence.py reads these keys from figures.json "figures"."""
    figures = evidence.database_figures(database)
    assert figures["requests_without_response"] == 0
    assert figures["responses_without_request"] == 0
    assert figures["call"]["tokens_used"] == 21
    assert figures["call"]["response_status"] == 200
    assert figures["server_version"].startswith("15")


# --- Service running ---------------------------------------------------------------------------
def test_service_not_active(gateway, database, guard) -> None:
    gateway["unit_show"] = read("systemctl_show_failed.txt")
    failed = only_failure(gateway, database, guard)
    assert failed["name"] == "Service running"
    assert failed["why"] == ["ActiveState is failed, not active", "SubState is failed, not running"]
    assert "failed (failed)" in failed["figure"]
    assert "restarts 5" in failed["figure"]


def test_service_activating_is_not_running(gateway, database, guard) -> None:
    gateway["unit_show"] = gateway["unit_show"].replace("SubState=running", "SubState=start")
    failed = only_failure(gateway, database, guard)
    assert failed["why"] == ["SubState is start, not running"]


def test_service_without_systemctl_output(gateway, database, guard) -> None:
    gateway["unit_show"] = ""
    failed = only_failure(gateway, database, guard)
    assert failed["why"] == ["systemctl show returned no properties"]
    assert failed["figure"].startswith("llm-gateway.service on molecule-gateway: unknown (unknown)")


def test_gateway_unreachable_fails_every_gateway_criterion(database, guard) -> None:
    criteria = judged({}, database, guard)
    for name in ("Service running", "Database connectivity (SCRAM, TLS)", "API call 200"):
        assert criteria[name]["passed"] is False
        assert "the gateway play did not report" in criteria[name]["why"][0]
    assert criteria["Service running"]["figure"].startswith("? on ?: unknown (unknown)")


# --- Database connectivity (SCRAM, TLS) --------------------------------------------------------
def test_no_db_connected_line(gateway, database, guard) -> None:
    gateway["db_connect_lines"] = []
    failed = only_failure(gateway, database, guard)
    assert failed["name"] == "Database connectivity (SCRAM, TLS)"
    assert failed["why"] == ["no db_connected line in the journal since the unit's last start"]
    assert failed["figure"].startswith("0 db_connected line(s) since start; server ?, TLS ?")


def test_db_connected_without_tls(gateway, database, guard) -> None:
    gateway["db_connect_lines"] = [
        line.replace('"ssl":true', '"ssl":false') for line in gateway["db_connect_lines"]
    ]
    failed = only_failure(gateway, database, guard)
    assert failed["why"] == [
        "2 of 2 db_connected line(s) without TLS: pid 815 ssl false, pid 816 ssl false"
    ]
    assert "TLS false (TLSv1.3)" in failed["figure"]


def test_a_live_session_without_tls(gateway, database, guard) -> None:
    def plain_session(rows: dict) -> None:
        rows["app_sessions"].append(
            {**rows["app_sessions"][0], "pid": 4711, "client_addr": "10.89.51.18", "ssl": False}
        )

    failed = only_failure(gateway, with_rows(database, plain_session), guard)
    assert failed["why"] == [
        "live session(s) of litellm_user without TLS: pid 4711 from 10.89.51.18"
    ]
    assert "live sessions of litellm_user: 2/3 on TLS" in failed["figure"]


def test_a_role_with_an_md5_verifier(gateway, database, guard) -> None:
    def md5(rows: dict) -> None:
        rows["verifiers"][0]["verifier_kind"] = "md5"

    failed = only_failure(gateway, with_rows(database, md5), guard)
    assert failed["why"] == ["no SCRAM-SHA-256 verifier for litellm_owner (md5)"]
    assert "SCRAM-SHA-256 verifiers 1/2" in failed["figure"]


def test_a_password_role_that_does_not_exist(gateway, database, guard) -> None:
    database["settings"]["password_roles"].append("litellm_reader")

    def ghost(rows: dict) -> None:
        rows["verifiers"].append({"rolname": "litellm_reader", "verifier_kind": "no such role"})

    failed = only_failure(gateway, with_rows(database, ghost), guard)
    assert failed["why"] == ["no SCRAM-SHA-256 verifier for litellm_reader (no such role)"]
    assert "SCRAM-SHA-256 verifiers 2/3" in failed["figure"]


def test_password_encryption_md5(gateway, database, guard) -> None:
    def md5(rows: dict) -> None:
        for row in rows["settings"]:
            if row["name"] == "password_encryption":
                row["setting"] = "md5"

    failed = only_failure(gateway, with_rows(database, md5), guard)
    assert failed["why"] == ["password_encryption is md5, not scram-sha-256"]


def test_a_pg_hba_network_rule_without_tls(gateway, database, guard) -> None:
    def host_md5(rows: dict) -> None:
        rows["hba_rules"].append(
            {
                "line_number": 9,
                "type": "host",
                "database": ["all"],
                "user_name": ["all"],
                "address": "0.0.0.0",
                "netmask": "0.0.0.0",
                "auth_method": "md5",
            }
        )

    failed = only_failure(gateway, with_rows(database, host_md5), guard)
    assert failed["why"] == ["pg_hba network rule(s) not hostssl+scram-sha-256: line 9 (host, md5)"]
    assert failed["figure"].endswith(
        "pg_hba network rules for litellm_db: 3, not hostssl+scram-sha-256: 1"
    )


def test_pg_hba_rules_of_other_databases_do_not_count(gateway, database, guard) -> None:
    def other(rows: dict) -> None:
        rows["hba_rules"].append(
            {"line_number": 9, "type": "host", "database": ["other_db"], "auth_method": "md5"}
        )

    criteria = judged(gateway, with_rows(database, other), guard)
    assert criteria["Database connectivity (SCRAM, TLS)"]["passed"] is True


def test_no_pg_hba_network_rule(gateway, database, guard) -> None:
    def local_only(rows: dict) -> None:
        rows["hba_rules"] = [rule for rule in rows["hba_rules"] if rule["type"] == "local"]

    failed = only_failure(gateway, with_rows(database, local_only), guard)
    assert failed["why"] == ["no pg_hba network rule for litellm_db"]


# --- API call 200 --------------------------------------------------------------------------------
def test_api_call_refused(gateway, database, guard) -> None:
    gateway["chat"].update(
        status=-1, error="Status code was -1: Connection refused", headers={}, response=""
    )
    criteria = judged(gateway, database, guard)
    api = criteria["API call 200"]
    assert api["passed"] is False
    assert api["why"] == [
        "HTTP -1: Status code was -1: Connection refused, not 200",
        "no X-Request-ID header in the response",
    ]
    assert api["figure"].startswith(
        "HTTP -1 (Status code was -1: Connection refused), X-Request-ID missing"
    )


def test_api_call_401(gateway, database, guard) -> None:
    gateway["chat"].update(status=401, error="HTTP Error 401: Unauthorized")
    failed = only_failure(gateway, database, guard)
    assert failed["name"] == "API call 200"
    assert failed["why"] == ["HTTP 401: HTTP Error 401: Unauthorized, not 200"]


# --- Request logged, Response logged -----------------------------------------------------------
def test_missing_response_row(gateway, database, guard) -> None:
    def writer_behind(rows: dict) -> None:
        rows["responses_newest"] = [
            row for row in rows["responses_newest"] if row["request_id"] != REQUEST_ID
        ]

    database["row_wait_attempts"] = 15
    criteria = judged(gateway, with_rows(database, writer_behind), guard)
    response = criteria["Response logged"]
    assert response["passed"] is False
    assert response["why"] == [f"0 rows in responses for {REQUEST_ID}, not 1 (after 15 look(s))"]
    assert response["figure"].startswith("0 row in responses for it (id ?, status ?")
    assert criteria["Request logged"]["passed"] is True
    # the call's response status is unknown, so integrity cannot be shown either
    assert criteria["Request/response integrity"]["why"] == [
        "the chat call's request and response rows are not both there"
    ]


def test_missing_request_row(gateway, database, guard) -> None:
    def nothing(rows: dict) -> None:
        rows["requests_newest"] = [
            row for row in rows["requests_newest"] if row["request_id"] != REQUEST_ID
        ]
        rows["responses_newest"] = [
            row for row in rows["responses_newest"] if row["request_id"] != REQUEST_ID
        ]

    criteria = judged(gateway, with_rows(database, nothing), guard)
    assert criteria["Request logged"]["why"] == [f"0 rows in requests for {REQUEST_ID}, not 1"]
    assert criteria["Request logged"]["figure"].startswith(
        f"0 row in requests for {REQUEST_ID} (id ?, model ?"
    )
    assert criteria["Response logged"]["passed"] is False


def test_no_request_id_to_look_for(gateway, database, guard) -> None:
    gateway["chat"]["headers"] = {}
    database["request_id"] = ""
    criteria = judged(gateway, database, guard)
    for name in ("Request logged", "Response logged"):
        assert criteria[name]["why"] == ["the chat call returned no X-Request-ID to look for"]


def test_a_request_id_that_is_not_a_plain_token_is_never_queried(gateway, database, guard) -> None:
    gateway["chat"]["headers"]["X-Request-ID"] = "x' OR '1'='1"
    database["request_id"] = "x' OR '1'='1"
    criteria = judged(gateway, database, guard)
    assert criteria["Request logged"]["why"] == [
        "the chat call's X-Request-ID \"x' OR '1'='1\" is not a plain token"
    ]


# --- Request/response integrity ----------------------------------------------------------------
def test_orphan_requests(gateway, database, guard) -> None:
    def orphan(rows: dict) -> None:
        rows["orphans"][0]["requests_without_response"] = 3

    failed = only_failure(gateway, with_rows(database, orphan), guard)
    assert failed["name"] == "Request/response integrity"
    assert failed["why"] == ["3 requests without a response"]
    assert failed["figure"].startswith("3 requests without a response, 0 responses without")


def test_foreign_key_without_cascade(gateway, database, guard) -> None:
    def no_cascade(rows: dict) -> None:
        rows["foreign_keys"][0]["definition"] = (
            "FOREIGN KEY (request_id_fk) REFERENCES requests(id)"
        )

    failed = only_failure(gateway, with_rows(database, no_cascade), guard)
    assert failed["why"] == [
        "0 foreign keys of responses read 'REFERENCES requests(id) ON DELETE CASCADE', not 1"
    ]
    assert failed["figure"].endswith(
        "foreign key: FOREIGN KEY (request_id_fk) REFERENCES requests(id)"
    )


def test_response_status_differs_from_request_status(gateway, database, guard) -> None:
    def differs(rows: dict) -> None:
        for row in rows["responses_newest"]:
            if row["request_id"] == REQUEST_ID:
                row["status_code"] = 502

    failed = only_failure(gateway, with_rows(database, differs), guard)
    assert failed["why"] == [
        "the chat call's response status 502 differs from its request status 200"
    ]


# --- the database play --------------------------------------------------------------------------
def test_database_unreachable_fails_every_database_criterion(gateway, guard) -> None:
    criteria = judged(gateway, {}, guard)
    for name in CRITERIA[3:6] + CRITERIA[1:2]:
        assert criteria[name]["passed"] is False, name
        assert any("the database play did not report" in why for why in criteria[name]["why"])
    assert criteria["Service running"]["passed"] is True
    assert criteria["API call 200"]["passed"] is True


def test_psql_failure_is_the_reason(gateway, database, guard) -> None:
    database.update(rows="", rows_error='psql: error: database "litellm_db" does not exist')
    criteria = judged(gateway, database, guard)
    assert criteria["Request logged"]["why"] == [
        'the database figures are missing: psql: error: database "litellm_db" does not exist'
    ]
    # not measured is not zero
    assert criteria["Request logged"]["figure"].startswith("? row in requests for")
    assert criteria["Request/response integrity"]["figure"].startswith(
        "? requests without a response, ? responses without a request; foreign key: none"
    )


# --- No secret in the bundle --------------------------------------------------------------------
def test_a_withheld_file_fails_the_secret_criterion(gateway, database, guard) -> None:
    guard["withheld"] = ["chat_call.json"]
    failed = only_failure(gateway, database, guard)
    assert failed["name"] == "No secret in the bundle"
    assert failed["why"] == ["withheld because they contained a secret: chat_call.json"]
    assert failed["figure"] == "3 secret values searched in 8 files; withheld: chat_call.json"


def test_no_secrets_to_search_fails(gateway, database, guard) -> None:
    guard["secrets_searched"] = 0
    failed = only_failure(gateway, database, guard)
    assert "no secret values to search for" in failed["why"][0]


@pytest.mark.parametrize(
    "criteria", [[], [{"name": "x", "passed": False, "figure": "", "why": ["y"]}]]
)
def test_verdict_fails_without_passing_criteria(criteria) -> None:
    assert evidence.verdict(criteria)["result"] == "FAIL"


def test_verdict_lines_and_reasons(gateway, database, guard) -> None:
    gateway["chat"].update(status=502, error="HTTP Error 502: Bad Gateway")
    verdict = evidence.verdict(judged(gateway, database, guard).values())
    assert verdict["result"] == "FAIL"
    assert verdict["failed"] == ["API call 200"]
    assert verdict["reasons"] == ["API call 200: HTTP 502: HTTP Error 502: Bad Gateway, not 200"]
    assert verdict["lines"][2].startswith("FAIL | API call 200 | HTTP 502 (HTTP Error 502")
    assert verdict["lines"][0].startswith("PASS | Service running | ")
