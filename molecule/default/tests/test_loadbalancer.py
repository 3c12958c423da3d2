"""The balancer host: HAProxy in front of every gateway, health-checked on liveness,
spreading calls over all gateways and sending none to a drained one.

Calls go from the controller to the balancer's service address, as a client's would; the
per-server counters come from HAProxy's admin socket (`show stat`)."""

from __future__ import annotations

import csv
import http.client
import io
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SHARED, client_tls

UNIT = "haproxy.service"
SOCKET = "/run/haproxy/admin.sock"
BACKEND = "gateway"
CALLS = 40

pytestmark = [
    pytest.mark.host_group("loadbalancer"),
    pytest.mark.systemd_unit(UNIT),
]


def admin(host: Any, command: str) -> str:
    result = host.run("echo %s | socat stdio %s", command, SOCKET)
    assert result.rc == 0, result.stderr
    return result.stdout


def servers(host: Any) -> dict[str, dict[str, str]]:
    """`show stat` of the gateway backend's servers, by server name."""
    rows = csv.DictReader(io.StringIO(admin(host, "show stat").lstrip("# ")))
    return {
        row["svname"]: row
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def sessions(host: Any) -> dict[str, int]:
    return {name: int(row["stot"]) for name, row in servers(host).items()}


def call_through(address: str, count: int) -> None:
    url = f"https://{address}:{SHARED['gateway_port']}/api/health/liveness"
    for _ in range(count):
        with urllib.request.urlopen(url, timeout=10, context=client_tls()) as answer:
            assert answer.status == 200


@pytest.fixture(scope="module")
def address(hostvars: dict[str, Any]) -> str:
    return hostvars["service_address"]


@pytest.fixture(scope="module")
def gateways(request: pytest.FixtureRequest) -> list[str]:
    from testinfra.utils.ansible_runner import AnsibleRunner

    return sorted(AnsibleRunner(request.config.option.ansible_inventory).get_hosts("gateway"))


def test_haproxy_runs_and_starts_at_boot(host: Any) -> None:
    service = host.service("haproxy")
    assert service.is_running
    assert service.is_enabled


def test_every_gateway_is_a_backend_and_up(host: Any, gateways: list[str]) -> None:
    states = {name: row["status"] for name, row in servers(host).items()}
    assert states == dict.fromkeys(gateways, "UP")


def test_health_checks_ask_for_liveness(host: Any) -> None:
    config = host.file("/etc/haproxy/haproxy.cfg").content_string
    assert "uri /api/health/liveness" in config


def test_calls_through_the_balancer_reach_every_gateway(
    host: Any, address: str, gateways: list[str]
) -> None:
    before = sessions(host)
    call_through(address, CALLS)
    after = sessions(host)
    served = {name: after[name] - before[name] for name in gateways}
    assert sum(served.values()) >= CALLS
    assert all(count > 0 for count in served.values()), served


@pytest.fixture
def drained(host: Any, gateways: list[str]) -> Iterator[str]:
    name = gateways[0]
    admin(host, f"set server {BACKEND}/{name} state drain")
    try:
        yield name
    finally:
        admin(host, f"set server {BACKEND}/{name} state ready")


def test_a_drained_gateway_gets_no_new_calls(host: Any, address: str, drained: str) -> None:
    before = sessions(host)
    call_through(address, CALLS)
    after = sessions(host)
    assert after[drained] == before[drained]
    assert sum(after.values()) - sum(before.values()) >= CALLS


def test_haproxy_metrics_are_served_on_loopback(host: Any) -> None:
    metrics = host.run(
        "python3 -c %s",
        "import urllib.request as u;"
        " print(u.urlopen('http://127.0.0.1:8405/metrics', timeout=5).read().decode())",
    )
    assert metrics.rc == 0, metrics.stderr
    assert "haproxy_server_status" in metrics.stdout


def test_clients_get_https_verified_with_the_environments_ca(address: str) -> None:
    """The balancer terminates TLS: a client that trusts the CA connects, plain HTTP gets no
    service, and the certificate names the address clients use."""
    port = SHARED["gateway_port"]
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        client_tls().wrap_socket(raw, server_hostname=address) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://{address}:{port}/api/health/liveness", timeout=10)
