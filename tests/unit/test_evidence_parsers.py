"""Parsing what the gateway host returns: systemctl show, the journal, /metrics."""

from __future__ import annotations

import evidence
import pytest
from samples import RELEASE_SOURCE, STARTED, read


# --- systemctl show ----------------------------------------------------------------------------
def test_systemctl_show_of_a_running_unit() -> None:
    properties = evidence.systemctl_show(read("systemctl_show_active.txt"))
    assert properties["ActiveState"] == "active"
    assert properties["SubState"] == "running"
    assert properties["MainPID"] == "812"
    assert properties["ActiveEnterTimestamp"] == f"@{STARTED}"
    assert len(properties) == 11


def test_systemctl_show_keeps_empty_values_and_ignores_noise() -> None:
    properties = evidence.systemctl_show(
        "ActiveEnterTimestamp=\nMemoryCurrent=[not set]\n\nFailed to connect to bus\n"
    )
    assert properties == {"ActiveEnterTimestamp": "", "MemoryCurrent": "[not set]"}


def test_service_figures_of_a_running_unit(gateway) -> None:
    service = evidence.service_figures(gateway)
    assert service["running"] is True
    assert service["uptime_s"] == 120
    assert service["restarts"] == 0
    assert service["memory_mib"] == 179.2
    assert service["started_at_utc"] == "2025-11-30T10:45:02Z"
    assert service["unit"] == "llm-gateway.service"


def test_service_figures_of_a_failed_unit(gateway) -> None:
    gateway["unit_show"] = read("systemctl_show_failed.txt")
    service = evidence.service_figures(gateway)
    assert service["running"] is False
    assert (service["active_state"], service["sub_state"]) == ("failed", "failed")
    assert service["restarts"] == 5
    # "[not set]": no memory figure rather than a wrong one
    assert service["memory_bytes"] is None


@pytest.mark.parametrize("memory", ["18446744073709551615", "[not set]", ""])
def test_unknown_memory_is_not_a_figure(gateway, memory: str) -> None:
    gateway["unit_show"] = f"ActiveState=active\nMemoryCurrent={memory}\n"
    assert evidence.service_figures(gateway)["memory_mib"] is None


@pytest.mark.parametrize(
    ("value", "since"),
    [(f"@{STARTED}", f"@{STARTED}"), ("", "today"), ("n/a", "today"), ("@0", "today")],
)
def test_journal_starts_at_the_last_start(value: str, since: str) -> None:
    assert evidence.journal_since({"ActiveEnterTimestamp": value}) == since
    assert evidence.journal_since({}) == "today"


# --- the app's db_connected line ------------------------------------------------------------------
def test_db_connected_lines_from_the_journal() -> None:
    connected = evidence.db_connected(read("journal_db_connected.txt").splitlines())
    assert connected["events"] == 2
    assert connected["tls"] == 2
    assert connected["without_tls"] == []
    assert connected["last"]["ssl_version"] == "TLSv1.3"
    assert connected["last"]["pool_size"] == 5
    assert connected["last"]["db_user"] == "litellm_user"


def test_db_connected_line_without_tls_is_named_by_pid() -> None:
    tls, plain = read("journal_db_connected.txt").splitlines()
    plain = plain.replace('"ssl":true,"ssl_version":"TLSv1.3"', '"ssl":false,"ssl_version":null')
    connected = evidence.db_connected([tls, plain])
    assert connected["events"] == 2
    assert connected["tls"] == 1
    assert connected["without_tls"] == ["pid 816 ssl false"]


def test_db_connected_ignores_lines_that_only_mention_it() -> None:
    lines = [
        "-- No entries --",
        '2025-11-30T10:45:03+00:00 gw gunicorn[815]:     emit_event("db_connected", **facts)',
        '2025-11-30T10:45:03+00:00 gw gunicorn[815]: db_unavailable {"event":"db_unavailable"}',
    ]
    assert evidence.db_connected(lines)["events"] == 0


def test_db_connected_with_broken_json_is_unreadable() -> None:
    line = (
        '2025-11-30T10:45:03+00:00 gw gunicorn[815]: db_connected {"event":"db_connected","ssl":tr'
    )
    connected = evidence.db_connected([line + "}"])
    assert connected["events"] == 0
    assert connected["unreadable"] == 1


# --- /metrics -------------------------------------------------------------------------------------
def test_parse_metrics_reads_labels_and_values() -> None:
    samples = evidence.parse_metrics(read("metrics.txt"))
    assert ("llm_gateway_tokens_total", {"kind": "prompt", "model": "fake-gpt"}, 12.0) in samples
    assert ("llm_gateway_cost_total", {"model": "fake-gpt"}, 1.95e-05) in samples
    assert not any(name.startswith("#") for name, _, _ in samples)


def test_parse_metrics_label_value_with_braces_and_quotes() -> None:
    text = 'm_total{model="a}b",path="x\\"y"} 3.0 1700000000000\n'
    assert evidence.parse_metrics(text) == [("m_total", {"model": "a}b", "path": 'x"y'}, 3.0)]


def test_db_overhead_percentiles_from_the_histogram() -> None:
    """10 calls: 3 under 50 us, 6 under 250 us, 9 under 5 ms, 1 above the last bucket."""
    overhead = evidence.histogram(
        evidence.parse_metrics(read("metrics.txt")), "llm_gateway_db_overhead_seconds"
    )
    assert overhead["count"] == 10
    assert overhead["p50"] == "<= 0.25 ms"
    assert overhead["p50_ms_at_most"] == 0.25
    assert overhead["p99"] == "> 10 ms"
    assert overhead["p99_ms_at_most"] is None
    assert overhead["buckets"][0] == ["1e-05", 0]
    assert overhead["buckets"][-1] == ["+Inf", 10]


def test_percentiles_sum_a_labelled_histogram_over_its_labels() -> None:
    text = "\n".join(
        f'lat_bucket{{le="{le}",model="{model}"}} {count}'
        for model, counts in {"a": (1, 2, 2), "b": (0, 0, 2)}.items()
        for le, count in zip(("0.1", "1.0", "+Inf"), counts, strict=True)
    )
    latency = evidence.histogram(evidence.parse_metrics(text), "lat")
    assert latency["count"] == 4
    assert latency["p50"] == "<= 1000 ms"
    assert latency["p99"] == "> 1000 ms"


def test_percentiles_before_the_first_observation() -> None:
    overhead = evidence.histogram(
        evidence.parse_metrics('x_bucket{le="0.001"} 0.0\nx_bucket{le="+Inf"} 0.0\n'), "x"
    )
    assert (overhead["count"], overhead["p50"], overhead["p99"]) == (0, "no sample", "no sample")
    assert evidence.histogram([], "x")["p50"] == "no sample"


def test_metrics_figures_cover_the_writer() -> None:
    figures = evidence.metrics_figures(read("metrics.txt"), 200)
    counters = {c["metric"]: c["value"] for c in figures["counters"]}
    assert counters["llm_gateway_requests_total"] == 2
    assert counters["llm_gateway_writer_exchanges_total"] == 9
    assert counters["llm_gateway_exchanges_lost_total"] == 0
    assert counters["llm_gateway_writer_up"] == 1
    batch = next(
        h for h in figures["histograms"] if h["metric"] == "llm_gateway_writer_batch_commit_seconds"
    )
    assert (batch["count"], batch["p50"], batch["p99"]) == (2, "<= 2.5 ms", "<= 5 ms")


def test_metrics_figures_without_metrics() -> None:
    figures = evidence.metrics_figures("", -1)
    assert figures["http_status"] == -1
    assert all(c["value"] is None for c in figures["counters"])
    assert all(h["p50"] == "no sample" for h in figures["histograms"])


# --- HAProxy's show stat --------------------------------------------------------------------------
def test_show_stat_rows_by_column_name() -> None:
    rows = evidence.haproxy_stat(read("haproxy_show_stat.txt"))
    assert [(row["pxname"], row["svname"]) for row in rows] == [
        ("public", "FRONTEND"),
        ("gateway", "molecule-gateway1"),
        ("gateway", "molecule-gateway2"),
        ("gateway", "BACKEND"),
        ("prometheus", "FRONTEND"),
    ]
    # every line ends with a comma: no nameless column
    assert "" not in rows[0]
    assert rows[1]["check_desc"] == "Layer7 check passed"
    assert rows[1]["proto"] == ""


def test_backend_servers_leave_out_frontends_backends_and_other_proxies() -> None:
    rows = evidence.haproxy_stat(read("haproxy_show_stat.txt"))
    servers = evidence.backend_servers(rows, "gateway")
    assert [(s["name"], s["status"], s["check_status"], s["check_code"]) for s in servers] == [
        ("molecule-gateway1", "UP", "L7OK", "200"),
        ("molecule-gateway2", "UP", "L7OK", "200"),
    ]
    assert servers[0]["address"] == "10.89.51.18:4000"
    assert servers[0]["sessions_total"] == 29
    assert evidence.backend_servers(rows, "public") == []
    assert evidence.backend_servers(rows, "other") == []


@pytest.mark.parametrize(
    "text",
    ["", "Unknown command: 'show stat'\n", "pxname,svname,status\ngateway,gw1,UP\n"],
)
def test_show_stat_without_its_header_has_no_rows(text: str) -> None:
    assert evidence.haproxy_stat(text) == []


def test_show_stat_of_an_older_haproxy_with_fewer_columns() -> None:
    text = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
        "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
        "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,\n"
        "gateway,gw1,0,0,0,1,,4,,,,0,,0,0,0,0,DOWN,1,1,0,3,1,12,12,,1,3,1,,4,,2,0,,1,"
        "* L4CON,,\n"
    )
    [server] = evidence.backend_servers(evidence.haproxy_stat(text), "gateway")
    assert (server["name"], server["status"], server["check_status"]) == ("gw1", "DOWN", "L4CON")
    assert server["check_desc"] == ""


def test_balancer_figures_against_the_inventory() -> None:
    balancer = {
        "host": "lb",
        "backend": "gateway",
        "socket": "/run/haproxy/admin.sock",
        "stat": read("haproxy_show_stat.txt"),
        "stat_rc": 0,
    }
    figures = evidence.balancer_figures(balancer, "lb", ["molecule-gateway1", "gw9"])
    assert figures["backend_found"] is True
    assert figures["stat_error"] == ""
    assert figures["missing"] == ["gw9"]
    assert figures["not_up"] == []
    assert [s["name"] for s in figures["not_in_inventory"]] == ["molecule-gateway2"]
    assert evidence.balancer_figures({}, "lb", [])["reported"] is False


def test_show_stat_fields_quoted_by_haproxy() -> None:
    """HAProxy quotes a CSV field holding a comma or a quote (csv_enc)."""
    text = (
        "# pxname,svname,status,check_status,check_code,check_desc,type,\n"
        'gateway,gw1,DOWN,L7STS,503,"HTTP status check returned code <3C>503<3E>, ""x""",2,\n'
    )
    [server] = evidence.backend_servers(evidence.haproxy_stat(text), "gateway")
    assert server["status"] == "DOWN"
    assert server["check_desc"] == 'HTTP status check returned code <3C>503<3E>, "x"'


# --- the release's SOURCE file ------------------------------------------------------------------
def test_release_source_names_the_commit_it_was_built_from() -> None:
    source = evidence.release_source(RELEASE_SOURCE)
    assert source["version"] == "0.4.0"
    assert evidence.release_label(source) == "commit 3f2a9c1d5e7b"


def test_release_built_from_uncommitted_changes_says_so() -> None:
    source = evidence.release_source("commit: 3f2a9c1d5e7b8a6c\nuncommitted_changes: true\n")
    assert evidence.release_label(source) == "commit 3f2a9c1d5e7b + uncommitted changes"


def test_release_without_source_file_is_unknown() -> None:
    assert evidence.release_label(evidence.release_source("")) == "unknown commit"
