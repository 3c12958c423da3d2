"""Certificates on day 200 and on a second controller: the database's server certificate
is signed anew before it expires, with the gateways connected over verify-full all along,
and a controller without the environment's CA key stops instead of creating a new CA."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED, ansible_playbook, psql, secrets_dir
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from testinfra.utils.ansible_runner import AnsibleRunner

pytestmark = [pytest.mark.host_group("database")]

PKI_DIR = secrets_dir() / "pki"
SERVER_CERT = "/etc/postgresql/17/main/tls/server.crt"
SHORT_LIFE = datetime.timedelta(days=1)
HEALTH_BODY = (
    "import sys, urllib.request;"
    " print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/api/health').read().decode())"
)


def served_not_after(db_host: Any) -> datetime.datetime:
    """Expiry of the certificate the running server presents (what a client sees)."""
    result = db_host.run(
        "openssl s_client -starttls postgres -connect 127.0.0.1:%s </dev/null 2>/dev/null"
        " | openssl x509 -noout -enddate",
        str(SHARED["postgresql_port"]),
    )
    assert result.rc == 0 and "notAfter=" in result.stdout, result.stdout + result.stderr
    text = result.stdout.strip().removeprefix("notAfter=")
    return datetime.datetime.strptime(text, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)


def verified_gateway_sessions(db_host: Any) -> set[str]:
    """Addresses of the application user's sessions that use TLS."""
    rows = psql(
        db_host,
        "SELECT DISTINCT a.client_addr FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        f" WHERE a.usename = '{SHARED['postgresql_app_user']}' AND s.ssl",
    )
    return set(rows.split())


def resign_expiring_tomorrow(name: str) -> bytes:
    """The controller's certificate `name`, signed again by the CA with one day left: what
    the server would present on day 824 of 825."""
    current = x509.load_pem_x509_certificate((PKI_DIR / f"{name}.crt").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((PKI_DIR / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((PKI_DIR / "ca.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(current.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SHORT_LIFE)
    )
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    (PKI_DIR / f"{name}.crt").write_bytes(pem)
    return pem


def test_a_certificate_near_its_end_is_renewed_with_the_gateways_connected(
    request: pytest.FixtureRequest,
    group_host: Callable[[str], Any],
    group_hosts: Callable[[str], list[Any]],
    hostvars: dict[str, Any],
) -> None:
    db_host = group_host("database")
    runner = AnsibleRunner(request.config.option.ansible_inventory)
    names = runner.get_hosts("gateway")
    gateways = {runner.get_variables(name)["service_address"] for name in names}
    assert verified_gateway_sessions(db_host) >= gateways

    # Day 824: the server presents a certificate that ends tomorrow.
    pem = resign_expiring_tomorrow(hostvars["inventory_hostname"])
    encoded = base64.b64encode(pem).decode()
    installed = db_host.run(
        "echo %s | base64 -d > %s && systemctl reload postgresql@17-main.service",
        encoded,
        SERVER_CERT,
    )
    assert installed.rc == 0, installed.stderr
    time.sleep(1)
    assert served_not_after(db_host) - datetime.datetime.now(datetime.UTC) < SHORT_LIFE

    run = ansible_playbook(request.config.option.ansible_inventory, "database.yml")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    renewed = served_not_after(db_host) - datetime.datetime.now(datetime.UTC)
    print(f"certificate renewal: served certificate now ends in {renewed.days} days")
    assert renewed > datetime.timedelta(days=30)
    # The reload kept the sessions; new ones verify the new certificate (same CA).
    assert verified_gateway_sessions(db_host) >= gateways
    for gateway in group_hosts("gateway"):
        health = gateway.run("python3 -c %s %s", HEALTH_BODY, str(SHARED["gateway_port"]))
        assert health.rc == 0, health.stdout + health.stderr
        assert json.loads(health.stdout)["writer"]["db_ok"] is True, health.stdout


def test_a_controller_without_the_ca_key_stops_instead_of_replacing_it(
    request: pytest.FixtureRequest, group_host: Callable[[str], Any], tmp_path: Path
) -> None:
    db_host = group_host("database")
    before = db_host.file(SERVER_CERT).sha256sum
    empty_pki = tmp_path / "pki"
    run = ansible_playbook(
        request.config.option.ansible_inventory,
        "database.yml",
        f"pki_dir={empty_pki}",
        "pki_ca_create=false",
    )
    output = run.stdout + run.stderr  # the failure's message goes to either, by callback
    assert run.returncode != 0, output[-3000:]
    # The run stopped in role pki's guard: its header is the last task header, and the
    # message says how to start a new CA on purpose (the callback may wrap the rest).
    last_task = run.stdout.rsplit("TASK [", 1)[-1]
    assert last_task.startswith("pki : Refuse to replace a missing CA silently]"), output[-3000:]
    assert "pki_ca_create=true" in output, output[-3000:]
    assert not empty_pki.exists(), "nothing may be created on the controller"
    assert db_host.file(SERVER_CERT).sha256sum == before
