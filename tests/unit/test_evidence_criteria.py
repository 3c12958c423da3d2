"""The acceptance criteria: PASS on a healthy deployment, FAIL with a clear reason otherwise.

The names and their order are those molecule/default/tests/test_evidence.py checks. The
deployment is the molecule scenario's shape: a balancer in front of two gateways.
"""

from __future__ import annotations

from typing import Any

import evidence
import pytest
import samples
from samples import BALANCERS, CHAT_URL, GATEWAYS, REQUEST_ID, Deployment, read, with_rows

CRITERIA = [
    "Service running",
    "Balancer: every gateway UP",
    "Database connectivity (SCRAM, TLS)",
    "API call 200",
    "Request logged",
    "Response logged",
    "Request/response integrity",
    "Certificates: valid, not near their end",
    "Backups younger than their schedule allows",
    "Partitions made ahead, none older than the retention",
    "No secret in the bundle",
]
GW1, GW2 = GATEWAYS
LB = BALANCERS[0]
NOT_REPORTED = "the {} play did not report (host unreachable or play not run)"


def judged(deployment: Deployment, guard: Any) -> dict[str, dict[str, Any]]:
    criteria = evidence.judge(evidence.measure(*deployment.measure_args()), guard)
    assert [c["name"] for c in criteria] == CRITERIA
    return {c["name"]: c for c in criteria}


def rows_changed(deployment: Deployment, change) -> Deployment:
    """The deployment with psql's JSON rows changed by change(rows)."""
    deployment.database = with_rows(deployment.database, change)
    return deployment


def only_failure(deployment: Deployment, guard: Any) -> dict[str, Any]:
    """The one criterion that fails (the test changed one thing)."""
    failed = [c for c in judged(deployment, guard).values() if not c["passed"]]
    assert len(failed) == 1, [c["name"] for c in failed]
    assert failed[0]["why"], "a failing criterion says why"
    return failed[0]


# --- a healthy deployment -----------------------------------------------------------------------
def test_every_criterion_passes_on_a_healthy_deployment(deployment, guard) -> None:
    criteria = judged(deployment, guard)
    assert {name: c["why"] for name, c in criteria.items() if not c["passed"]} == {}
    verdict = evidence.verdict(criteria.values())
    assert (verdict["result"], verdict["passed"], verdict["total"]) == ("PASS", 11, 11)


def test_figures_of_a_healthy_deployment(deployment, guard) -> None:
    criteria = judged(deployment, guard)
    assert criteria["Service running"]["figure"] == (
        f"llm-gateway.service on {GW1}: active (running), up 120 s, main PID 812,"
        " restarts 0, memory 179.2 MiB;"
        f" llm-gateway.service on {GW2}: active (running), up 95 s, main PID 907,"
        " restarts 0, memory 179.2 MiB"
    )
    assert criteria["Balancer: every gateway UP"]["figure"] == (
        f"{LB}, backend gateway: {GW1} UP, {GW2} UP"
    )
    connected = (
        " 2 db_connected line(s) since start, server 17.7 (Debian 17.7-3.pgdg13+1), TLS true"
        " (TLSv1.3), pool_size 5 + max_overflow 5, user litellm_user"
    )
    assert criteria["Database connectivity (SCRAM, TLS)"]["figure"] == (
        f"{GW1}:{connected}; {GW2}:{connected}; live sessions of"
        " litellm_user: 2/2 on TLS (TLSv1.3); SCRAM-SHA-256 verifiers 2/2, password_encryption"
        " scram-sha-256; pg_hba network rules for litellm_db: 2, not hostssl+scram-sha-256: 0"
    )
    assert criteria["API call 200"]["figure"] == (
        f"HTTP 200, X-Request-ID {REQUEST_ID}, X-Total-Latency 14.27ms, X-DB-Overhead 0.04ms,"
        f" tokens 14 prompt + 7 completion = 21; made on {LB} (balancer): POST {CHAT_URL}"
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
        "3 secret values searched in 9 files; withheld: none"
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
def test_service_not_active(deployment, guard) -> None:
    deployment.gateway["unit_show"] = read("systemctl_show_failed.txt")
    failed = only_failure(deployment, guard)
    assert failed["name"] == "Service running"
    assert failed["why"] == [
        f"{GW1}: ActiveState is failed, not active",
        f"{GW1}: SubState is failed, not running",
    ]
    assert f"on {GW1}: failed (failed)" in failed["figure"]
    assert "restarts 5" in failed["figure"]


def test_one_of_two_gateways_down_fails_naming_it(deployment, guard) -> None:
    deployment.gateways[GW2]["unit_show"] = read("systemctl_show_failed.txt")
    failed = only_failure(deployment, guard)
    assert failed["name"] == "Service running"
    assert failed["why"] == [
        f"{GW2}: ActiveState is failed, not active",
        f"{GW2}: SubState is failed, not running",
    ]
    first, second = failed["figure"].split("; ")
    assert first.startswith(f"llm-gateway.service on {GW1}: active (running), up 120 s")
    assert second.startswith(f"llm-gateway.service on {GW2}: failed (failed)")
    assert "restarts 5" in second


def test_service_activating_is_not_running(deployment, guard) -> None:
    gateway = deployment.gateway
    gateway["unit_show"] = gateway["unit_show"].replace("SubState=running", "SubState=start")
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{GW1}: SubState is start, not running"]


def test_service_without_systemctl_output(deployment, guard) -> None:
    deployment.gateway["unit_show"] = ""
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{GW1}: systemctl show returned no properties"]
    assert failed["figure"].startswith(f"llm-gateway.service on {GW1}: unknown (unknown)")


def test_an_unreachable_gateway_says_so(deployment, guard) -> None:
    """ignore_unreachable: the play still reports, with nothing read and the reason."""
    unreachable = "Failed to connect to the host via ssh: No route to host"
    deployment.gateways[GW2].update(
        error=unreachable, unit_show="", unit_status="", db_connect_lines=[]
    )
    criteria = judged(deployment, guard)
    assert criteria["Service running"]["why"] == [
        f"{GW2}: systemctl show returned no properties ({unreachable})"
    ]
    assert criteria["Database connectivity (SCRAM, TLS)"]["why"] == [
        f"{GW2}: no db_connected line in the journal since the unit's last start"
    ]


def test_gateway_play_not_run_fails_every_gateway_criterion(deployment, guard) -> None:
    deployment.gateways = {}
    criteria = judged(deployment, guard)
    for name in ("Service running", "Database connectivity (SCRAM, TLS)"):
        assert criteria[name]["passed"] is False
        assert criteria[name]["why"][:2] == [
            f"{GW1}: {NOT_REPORTED.format('gateway')}",
            f"{GW2}: {NOT_REPORTED.format('gateway')}",
        ]
    assert criteria["Service running"]["figure"].startswith(f"? on {GW1}: unknown (unknown)")
    # The call went through the balancer: it was made and answered.
    assert criteria["API call 200"]["passed"] is True


def test_a_gateway_that_did_not_report_is_named(deployment, guard) -> None:
    del deployment.gateways[GW2]
    criteria = judged(deployment, guard)
    assert criteria["Service running"]["why"] == [f"{GW2}: {NOT_REPORTED.format('gateway')}"]
    assert criteria["Database connectivity (SCRAM, TLS)"]["why"] == [
        f"{GW2}: {NOT_REPORTED.format('gateway')}"
    ]


def test_no_gateway_in_the_inventory(deployment, guard) -> None:
    deployment.gateways, deployment.gateway_hosts = {}, []
    criteria = judged(deployment, guard)
    assert criteria["Service running"]["why"] == ["no host in the inventory's gateway group"]
    assert criteria["Service running"]["figure"] == "no gateway in the inventory"
    assert criteria["Balancer: every gateway UP"]["why"] == [
        "no host in the inventory's gateway group"
    ]


def test_without_the_inventory_the_gateways_that_reported_are_judged(deployment, guard) -> None:
    deployment.gateway_hosts = None
    assert all(c["passed"] for c in judged(deployment, guard).values())


# --- Balancer: every gateway UP ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "check", "code", "shown"),
    [
        ("DOWN", "L4CON", "", "DOWN (check L4CON)"),
        ("DOWN", "L7STS", "503", "DOWN (check L7STS 503)"),
        ("MAINT", "L7OK", "200", "MAINT (check L7OK 200)"),
        ("DRAIN", "L7OK", "200", "DRAIN (check L7OK 200)"),
        ("UP 1/3", "L4TOUT", "", "UP 1/3 (check L4TOUT)"),
        ("no check", "", "", "no check"),
    ],
)
def test_a_gateway_not_up_fails_the_balancer(deployment, guard, status, check, code, shown):
    deployment.set_status(GW2, status, check, code)
    failed = only_failure(deployment, guard)
    assert failed["name"] == "Balancer: every gateway UP"
    assert failed["why"] == [f"{LB}: gateway/{GW2} {shown}, not UP"]
    assert failed["figure"] == f"{LB}, backend gateway: {GW1} UP, {GW2} {shown}"


def test_a_check_in_progress_shows_the_last_result(deployment, guard) -> None:
    deployment.set_status(GW2, "DOWN", "* L4CON")
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{LB}: gateway/{GW2} DOWN (check L4CON), not UP"]


def test_a_gateway_missing_from_the_backend(deployment, guard) -> None:
    deployment.gateway_hosts.append("molecule-gateway3")
    deployment.gateways["molecule-gateway3"] = {
        **deployment.gateway,
        "host": "molecule-gateway3",
    }
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{LB}: molecule-gateway3 is not a server of backend gateway"]
    assert failed["figure"].endswith(f"{GW2} UP, molecule-gateway3 not a server")


def test_a_server_that_is_no_gateway_of_the_inventory_is_shown(deployment, guard) -> None:
    deployment.gateway_hosts.remove(GW2)
    del deployment.gateways[GW2]
    criteria = judged(deployment, guard)
    balancer = criteria["Balancer: every gateway UP"]
    assert balancer["passed"] is True
    assert balancer["figure"] == (
        f"{LB}, backend gateway: {GW1} UP (also, not a gateway of the inventory: {GW2} UP)"
    )


def test_another_backend_name(deployment, guard) -> None:
    deployment.balancers[LB]["backend"] = "llm"
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{LB}: no backend llm in show stat"]


def test_the_admin_socket_cannot_be_read(deployment, guard) -> None:
    deployment.balancers[LB].update(
        stat="",
        stat_rc=1,
        stat_stderr='socat[311] E connect(5, AF=1 "/run/haproxy/admin.sock", 25):'
        " No such file or directory; non-zero return code",
    )
    failed = only_failure(deployment, guard)
    assert failed["why"] == [
        f"{LB}: show stat on /run/haproxy/admin.sock failed: exit status 1;"
        ' socat[311] E connect(5, AF=1 "/run/haproxy/admin.sock", 25): No such file or'
        " directory; non-zero return code"
    ]
    assert failed["figure"] == f"{LB}: not read"


def test_show_stat_without_its_header(deployment, guard) -> None:
    deployment.balancers[LB]["stat"] = "Unknown command: 'show stat'\n"
    failed = only_failure(deployment, guard)
    assert failed["why"] == [
        f"{LB}: show stat on /run/haproxy/admin.sock failed: no '# pxname,...' header in the output"
    ]


def test_a_balancer_that_did_not_report(deployment, guard) -> None:
    deployment.balancers = {}
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"{LB}: {NOT_REPORTED.format('balancer')}"]


def test_every_balancer_is_judged(deployment, guard) -> None:
    deployment.balancer_hosts.append("molecule-lb2")
    deployment.balancers["molecule-lb2"] = {
        **deployment.balancers[LB],
        "host": "molecule-lb2",
    }
    deployment.set_status(GW1, "MAINT")
    deployment.balancers[LB]["stat"] = read("haproxy_show_stat.txt")
    failed = only_failure(deployment, guard)
    assert failed["why"] == [f"molecule-lb2: gateway/{GW1} MAINT, not UP"]
    assert failed["figure"] == (
        f"{LB}, backend gateway: {GW1} UP, {GW2} UP;"
        f" molecule-lb2, backend gateway: {GW1} MAINT, {GW2} UP"
    )


def test_no_balancer_passes_and_says_so(deployment, guard) -> None:
    """Production: an empty loadbalancer group, the chat call made on the gateway."""
    criteria = judged(deployment.without_balancer(), guard)
    assert all(c["passed"] for c in criteria.values()), {
        n: c["why"] for n, c in criteria.items() if not c["passed"]
    }
    balancer = criteria["Balancer: every gateway UP"]
    assert balancer["figure"] == (
        "no balancer in this inventory (clients reach the gateway directly)"
    )
    assert balancer["why"] == []
    assert criteria["API call 200"]["figure"].endswith(
        f"; made on {GW1} (gateway): POST {CHAT_URL}"
    )


# --- Database connectivity (SCRAM, TLS) --------------------------------------------------------
def test_no_db_connected_line(deployment, guard) -> None:
    deployment.gateway["db_connect_lines"] = []
    failed = only_failure(deployment, guard)
    assert failed["name"] == "Database connectivity (SCRAM, TLS)"
    assert failed["why"] == [
        f"{GW1}: no db_connected line in the journal since the unit's last start"
    ]
    assert failed["figure"].startswith(
        f"{GW1}: 0 db_connected line(s) since start, server ?, TLS ?"
    )
    assert f"; {GW2}: 2 db_connected line(s) since start, server 17.7" in failed["figure"]


def test_one_gateway_without_db_connected_line_is_named(deployment, guard) -> None:
    deployment.gateways[GW2]["db_connect_lines"] = ["-- No entries --"]
    failed = only_failure(deployment, guard)
    assert failed["why"] == [
        f"{GW2}: no db_connected line in the journal since the unit's last start"
    ]


def test_db_connected_without_tls(deployment, guard) -> None:
    gateway = deployment.gateway
    gateway["db_connect_lines"] = [
        line.replace('"ssl":true', '"ssl":false') for line in gateway["db_connect_lines"]
    ]
    failed = only_failure(deployment, guard)
    assert failed["why"] == [
        f"{GW1}: 2 of 2 db_connected line(s) without TLS: pid 815 ssl false, pid 816 ssl false"
    ]
    assert "TLS false (TLSv1.3)" in failed["figure"]


def test_a_live_session_without_tls(deployment, guard) -> None:
    def plain_session(rows: dict) -> None:
        rows["app_sessions"].append(
            {**rows["app_sessions"][0], "pid": 4711, "client_addr": "10.89.51.18", "ssl": False}
        )

    failed = only_failure(rows_changed(deployment, plain_session), guard)
    assert failed["why"] == [
        "live session(s) of litellm_user without TLS: pid 4711 from 10.89.51.18"
    ]
    assert "live sessions of litellm_user: 2/3 on TLS" in failed["figure"]


def test_a_role_with_an_md5_verifier(deployment, guard) -> None:
    def md5(rows: dict) -> None:
        rows["verifiers"][0]["verifier_kind"] = "md5"

    failed = only_failure(rows_changed(deployment, md5), guard)
    assert failed["why"] == ["no SCRAM-SHA-256 verifier for litellm_owner (md5)"]
    assert "SCRAM-SHA-256 verifiers 1/2" in failed["figure"]


def test_a_password_role_that_does_not_exist(deployment, guard) -> None:
    deployment.database["settings"]["password_roles"].append("litellm_reader")

    def ghost(rows: dict) -> None:
        rows["verifiers"].append({"rolname": "litellm_reader", "verifier_kind": "no such role"})

    failed = only_failure(rows_changed(deployment, ghost), guard)
    assert failed["why"] == ["no SCRAM-SHA-256 verifier for litellm_reader (no such role)"]
    assert "SCRAM-SHA-256 verifiers 2/3" in failed["figure"]


def test_password_encryption_md5(deployment, guard) -> None:
    def md5(rows: dict) -> None:
        for row in rows["settings"]:
            if row["name"] == "password_encryption":
                row["setting"] = "md5"

    failed = only_failure(rows_changed(deployment, md5), guard)
    assert failed["why"] == ["password_encryption is md5, not scram-sha-256"]


def test_a_pg_hba_network_rule_without_tls(deployment, guard) -> None:
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

    failed = only_failure(rows_changed(deployment, host_md5), guard)
    assert failed["why"] == ["pg_hba network rule(s) not hostssl+scram-sha-256: line 9 (host, md5)"]
    assert failed["figure"].endswith(
        "pg_hba network rules for litellm_db: 3, not hostssl+scram-sha-256: 1"
    )


def test_pg_hba_rules_of_other_databases_do_not_count(deployment, guard) -> None:
    def other(rows: dict) -> None:
        rows["hba_rules"].append(
            {"line_number": 9, "type": "host", "database": ["other_db"], "auth_method": "md5"}
        )

    criteria = judged(rows_changed(deployment, other), guard)
    assert criteria["Database connectivity (SCRAM, TLS)"]["passed"] is True


def test_no_pg_hba_network_rule(deployment, guard) -> None:
    def local_only(rows: dict) -> None:
        rows["hba_rules"] = [rule for rule in rows["hba_rules"] if rule["type"] == "local"]

    failed = only_failure(rows_changed(deployment, local_only), guard)
    assert failed["why"] == ["no pg_hba network rule for litellm_db"]


# --- API call 200 --------------------------------------------------------------------------------
def test_api_call_refused(deployment, guard) -> None:
    deployment.entry["chat"].update(
        status=-1, error="Status code was -1: Connection refused", headers={}, response=""
    )
    criteria = judged(deployment, guard)
    api = criteria["API call 200"]
    assert api["passed"] is False
    assert api["why"] == [
        "HTTP -1: Status code was -1: Connection refused, not 200",
        "no X-Request-ID header in the response",
    ]
    assert api["figure"].startswith(
        "HTTP -1 (Status code was -1: Connection refused), X-Request-ID missing"
    )


def test_api_call_401(deployment, guard) -> None:
    deployment.entry["chat"].update(status=401, error="HTTP Error 401: Unauthorized")
    failed = only_failure(deployment, guard)
    assert failed["name"] == "API call 200"
    assert failed["why"] == ["HTTP 401: HTTP Error 401: Unauthorized, not 200"]


def test_the_chat_call_is_recorded_with_its_host_and_url(deployment, guard) -> None:
    figures = evidence.measure(*deployment.measure_args())
    assert figures["entry"] == {
        "reported": True,
        "host": LB,
        "via": "balancer",
        "method": "POST",
        "url": CHAT_URL,
        "collection_error": "",
    }


def test_a_chat_call_past_the_balancer_fails(deployment, guard) -> None:
    """With balancers in the inventory the call must take the clients' way in."""
    deployment.entry = samples.entry_facts(GW2)
    failed = only_failure(deployment, guard)
    assert failed["name"] == "API call 200"
    assert failed["why"] == [f"made on {GW2}, not through a balancer of the inventory ({LB})"]
    assert failed["figure"].endswith(f"; made on {GW2} (gateway): POST {CHAT_URL}")


def test_chat_play_not_run(deployment, guard) -> None:
    deployment.entry = {}
    # The database play then has no request id to look for.
    deployment.database["request_id"] = ""
    criteria = judged(deployment, guard)
    api = criteria["API call 200"]
    assert api["why"] == [NOT_REPORTED.format("chat call's")]
    assert api["figure"].endswith("; made on ? (not made): POST ?")
    for name in ("Request logged", "Response logged"):
        assert criteria[name]["why"] == ["the chat call returned no X-Request-ID to look for"]


# --- Request logged, Response logged -----------------------------------------------------------
def test_missing_response_row(deployment, guard) -> None:
    def writer_behind(rows: dict) -> None:
        rows["responses_newest"] = [
            row for row in rows["responses_newest"] if row["request_id"] != REQUEST_ID
        ]

    deployment.database["row_wait_attempts"] = 15
    criteria = judged(rows_changed(deployment, writer_behind), guard)
    response = criteria["Response logged"]
    assert response["passed"] is False
    assert response["why"] == [f"0 rows in responses for {REQUEST_ID}, not 1 (after 15 look(s))"]
    assert response["figure"].startswith("0 row in responses for it (id ?, status ?")
    assert criteria["Request logged"]["passed"] is True
    # the call's response status is unknown, so integrity cannot be shown either
    assert criteria["Request/response integrity"]["why"] == [
        "the chat call's request and response rows are not both there"
    ]


def test_missing_request_row(deployment, guard) -> None:
    def nothing(rows: dict) -> None:
        rows["requests_newest"] = [
            row for row in rows["requests_newest"] if row["request_id"] != REQUEST_ID
        ]
        rows["responses_newest"] = [
            row for row in rows["responses_newest"] if row["request_id"] != REQUEST_ID
        ]

    criteria = judged(rows_changed(deployment, nothing), guard)
    assert criteria["Request logged"]["why"] == [f"0 rows in requests for {REQUEST_ID}, not 1"]
    assert criteria["Request logged"]["figure"].startswith(
        f"0 row in requests for {REQUEST_ID} (id ?, model ?"
    )
    assert criteria["Response logged"]["passed"] is False


def test_no_request_id_to_look_for(deployment, guard) -> None:
    deployment.entry["chat"]["headers"] = {}
    deployment.database["request_id"] = ""
    criteria = judged(deployment, guard)
    for name in ("Request logged", "Response logged"):
        assert criteria[name]["why"] == ["the chat call returned no X-Request-ID to look for"]


def test_a_request_id_that_is_not_a_plain_token_is_never_queried(deployment, guard) -> None:
    deployment.entry["chat"]["headers"]["X-Request-ID"] = "x' OR '1'='1"
    deployment.database["request_id"] = "x' OR '1'='1"
    criteria = judged(deployment, guard)
    assert criteria["Request logged"]["why"] == [
        "the chat call's X-Request-ID \"x' OR '1'='1\" is not a plain token"
    ]


# --- Request/response integrity ----------------------------------------------------------------
def test_orphan_requests(deployment, guard) -> None:
    def orphan(rows: dict) -> None:
        rows["orphans"][0]["requests_without_response"] = 3

    failed = only_failure(rows_changed(deployment, orphan), guard)
    assert failed["name"] == "Request/response integrity"
    assert failed["why"] == ["3 requests without a response"]
    assert failed["figure"].startswith("3 requests without a response, 0 responses without")


def test_foreign_key_without_cascade(deployment, guard) -> None:
    def no_cascade(rows: dict) -> None:
        rows["foreign_keys"][0]["definition"] = (
            "FOREIGN KEY (request_id_fk) REFERENCES requests(id)"
        )

    failed = only_failure(rows_changed(deployment, no_cascade), guard)
    assert failed["why"] == [
        "0 foreign keys of responses read 'REFERENCES requests(id) ON DELETE CASCADE', not 1"
    ]
    assert failed["figure"].endswith(
        "foreign key: FOREIGN KEY (request_id_fk) REFERENCES requests(id)"
    )


def test_response_status_differs_from_request_status(deployment, guard) -> None:
    def differs(rows: dict) -> None:
        for row in rows["responses_newest"]:
            if row["request_id"] == REQUEST_ID:
                row["status_code"] = 502

    failed = only_failure(rows_changed(deployment, differs), guard)
    assert failed["why"] == [
        "the chat call's response status 502 differs from its request status 200"
    ]


# --- the database play --------------------------------------------------------------------------
def test_database_unreachable_fails_every_database_criterion(deployment, guard) -> None:
    deployment.database = {}
    criteria = judged(deployment, guard)
    for name in CRITERIA[4:7] + CRITERIA[2:3]:
        assert criteria[name]["passed"] is False, name
        assert any("the database play did not report" in why for why in criteria[name]["why"])
    assert criteria["Service running"]["passed"] is True
    assert criteria["Balancer: every gateway UP"]["passed"] is True
    assert criteria["API call 200"]["passed"] is True


def test_psql_failure_is_the_reason(deployment, guard) -> None:
    deployment.database.update(
        rows="", rows_error='psql: error: database "litellm_db" does not exist'
    )
    criteria = judged(deployment, guard)
    assert criteria["Request logged"]["why"] == [
        'the database figures are missing: psql: error: database "litellm_db" does not exist'
    ]
    # not measured is not zero
    assert criteria["Request logged"]["figure"].startswith("? row in requests for")
    assert criteria["Request/response integrity"]["figure"].startswith(
        "? requests without a response, ? responses without a request; foreign key: none"
    )


# --- No secret in the bundle --------------------------------------------------------------------
def test_a_withheld_file_fails_the_secret_criterion(deployment, guard) -> None:
    guard["withheld"] = ["chat_call.json"]
    failed = only_failure(deployment, guard)
    assert failed["name"] == "No secret in the bundle"
    assert failed["why"] == ["withheld because they contained a secret: chat_call.json"]
    assert failed["figure"] == "3 secret values searched in 9 files; withheld: chat_call.json"


def test_no_secrets_to_search_fails(deployment, guard) -> None:
    guard["secrets_searched"] = 0
    failed = only_failure(deployment, guard)
    assert "no secret values to search for" in failed["why"][0]


@pytest.mark.parametrize(
    "criteria", [[], [{"name": "x", "passed": False, "figure": "", "why": ["y"]}]]
)
def test_verdict_fails_without_passing_criteria(criteria) -> None:
    assert evidence.verdict(criteria)["result"] == "FAIL"


def test_verdict_lines_and_reasons(deployment, guard) -> None:
    deployment.entry["chat"].update(status=502, error="HTTP Error 502: Bad Gateway")
    verdict = evidence.verdict(judged(deployment, guard).values())
    assert verdict["result"] == "FAIL"
    assert verdict["failed"] == ["API call 200"]
    assert verdict["reasons"] == ["API call 200: HTTP 502: HTTP Error 502: Bad Gateway, not 200"]
    assert verdict["lines"][3].startswith("FAIL | API call 200 | HTTP 502 (HTTP Error 502")
    assert verdict["lines"][0].startswith("PASS | Service running | ")


# --- certificates --------------------------------------------------------------------------------
CERTIFICATES = "Certificates: valid, not near their end"


def test_the_certificates_figure_names_both_ends(deployment: Deployment, guard: Any) -> None:
    criterion = judged(deployment, guard)[CERTIFICATES]
    assert criterion["passed"], criterion["why"]
    assert "database certificate CN=molecule-db ends" in criterion["figure"]
    assert "(825 days left)" in criterion["figure"] and "(3650 days left)" in criterion["figure"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"server_days": 5}, "the database's certificate has 5 days left (fewer than 15)"),
        ({"ca_days": 100}, "the CA has 100 days left (fewer than 365)"),
        ({"issuer": "some other CA"}, "is issued by CN=some other CA, not the CA"),
    ],
)
def test_certificates_near_their_end_or_from_another_ca_fail(
    deployment: Deployment, guard: Any, change: dict[str, Any], reason: str
) -> None:
    deployment.database.update(samples.certificates(**change))
    failed = only_failure(deployment, guard)
    assert failed["name"] == CERTIFICATES
    assert any(reason in why for why in failed["why"]), failed["why"]


def test_a_database_that_presents_no_certificate_fails(deployment: Deployment, guard: Any) -> None:
    deployment.database["served_certificate"] = "connect:errno=111\n"
    failed = only_failure(deployment, guard)
    assert failed["why"] == ["the database's certificate: no certificate"]
