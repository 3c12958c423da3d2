"""The database host: PostgreSQL 17 with SCRAM, TLS and pg_hba for the gateways only.

Effects, not files: the server's own views (pg_settings, pg_authid, pg_hba_file_rules,
catalogs) and a real connection attempt that pg_hba must refuse. The schema tests need the
gateway's migration (site.yml's gateway tier) to have run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED, psql
from testinfra.utils.ansible_runner import AnsibleRunner

VERSION = 17
UNIT = f"postgresql@{VERSION}-main.service"
PORT = SHARED["postgresql_port"]
DATABASE = SHARED["postgresql_app_database"]
OWNER = SHARED["postgresql_app_owner"]
RUNTIME = SHARED["postgresql_app_user"]
APP_ROLES = [OWNER, RUNTIME]
# Generated lab secret (ansible.builtin.password lookups) of each application role.
PASSWORD_FILES = {
    OWNER: "postgresql_app_owner_password",
    RUNTIME: "postgresql_app_user_password",
}
# Indexed columns the gateway's queries rely on: (table, first key column).
INDEXES = [
    ("requests", "request_id"),
    ("requests", "model"),
    ("requests", "created_at"),
    ("responses", "request_id_fk"),
]

pytestmark = [
    pytest.mark.host_group("database"),
    pytest.mark.systemd_unit(UNIT),
]


def query(host: Any, sql: str, database: str = "postgres") -> str:
    return psql(host, sql, database)


@pytest.fixture(scope="module")
def service_address(hostvars: dict[str, Any]) -> str:
    return hostvars["service_address"]


@pytest.fixture(scope="module")
def gateway_addresses(request: pytest.FixtureRequest) -> set[str]:
    """The service_address of every gateway host: the only clients pg_hba may admit."""
    runner = AnsibleRunner(request.config.option.ansible_inventory)
    return {runner.get_variables(name)["service_address"] for name in runner.get_hosts("gateway")}


def test_service_running_and_enabled(host: Any) -> None:
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


@pytest.mark.parametrize("address", ["127.0.0.1", "service_address"])
def test_listening(host: Any, service_address: str, address: str) -> None:
    address = service_address if address == "service_address" else address
    assert host.socket(f"tcp://{address}:{PORT}").is_listening


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("password_encryption", "scram-sha-256"),
        ("ssl", "on"),
        ("ssl_min_protocol_version", "TLSv1.2"),
        ("port", str(PORT)),
        ("data_checksums", "on"),
    ],
)
def test_setting(host: Any, name: str, expected: str) -> None:
    assert query(host, f"SHOW {name}") == expected


def test_no_setting_waits_for_a_restart(host: Any) -> None:
    assert query(host, "SELECT string_agg(name, ',') FROM pg_settings WHERE pending_restart") == ""


@pytest.mark.parametrize("role", APP_ROLES)
def test_app_role_has_scram_verifier(host: Any, role: str) -> None:
    verifier = query(host, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
    assert verifier.startswith("SCRAM-SHA-256$")


def test_every_stored_password_is_scram(host: Any) -> None:
    others = query(
        host,
        "SELECT string_agg(rolname, ',') FROM pg_authid "
        "WHERE rolpassword IS NOT NULL AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'",
    )
    assert others == ""


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize(
    "attribute", ["rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication", "rolbypassrls"]
)
def test_app_role_has_no_admin_attribute(host: Any, role: str, attribute: str) -> None:
    assert query(host, f"SELECT {attribute} FROM pg_roles WHERE rolname = '{role}'") == "f"


def test_hba_file_has_no_errors(host: Any) -> None:
    assert query(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_hba_local_rule_is_postgres_peer_only(host: Any) -> None:
    rules = query(
        host,
        "SELECT database::text, user_name::text, auth_method FROM pg_hba_file_rules "
        "WHERE type = 'local'",
    )
    assert rules.splitlines() == ["{all}|{postgres}|peer"]


@pytest.mark.parametrize("role", APP_ROLES)
def test_hba_admits_app_role_from_each_gateway_only(
    host: Any, gateway_addresses: set[str], role: str
) -> None:
    addresses = query(
        host,
        "SELECT address FROM pg_hba_file_rules "
        f"WHERE type = 'hostssl' AND database = '{{{DATABASE}}}' AND user_name = '{{{role}}}' "
        "AND netmask = '255.255.255.255' AND auth_method = 'scram-sha-256'",
    )
    assert set(addresses.splitlines()) == gateway_addresses


def test_hba_network_rules_are_app_hostssl_scram_host_rules(host: Any) -> None:
    others = query(
        host,
        "SELECT count(*) FROM pg_hba_file_rules WHERE type <> 'local' AND NOT ("
        f"type = 'hostssl' AND database = '{{{DATABASE}}}' "
        f"AND user_name <@ '{{{OWNER},{RUNTIME}}}' "
        "AND netmask IN ('255.255.255.255', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff') "
        "AND auth_method = 'scram-sha-256')",
    )
    assert others == "0"


@pytest.mark.parametrize("rule_type", ["host", "hostnossl", "hostgssenc", "hostnogssenc"])
def test_hba_has_no_rule_of_type(host: Any, rule_type: str) -> None:
    assert query(host, f"SELECT count(*) FROM pg_hba_file_rules WHERE type = '{rule_type}'") == "0"


@pytest.mark.parametrize("method", ["trust", "md5", "password", "ident", "reject"])
def test_hba_has_no_rule_with_method(host: Any, method: str) -> None:
    assert (
        query(host, f"SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = '{method}'") == "0"
    )


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize(
    ("sslmode", "encryption"),
    [("verify-full", "SSL encryption"), ("disable", "no encryption")],
)
def test_unlisted_address_is_refused(
    host: Any,
    service_address: str,
    credential: Any,
    credentials_dir: Path,
    role: str,
    sslmode: str,
    encryption: str,
) -> None:
    """The database host's own address is not a gateway: the right password does not help.

    With verify-full against the environment's CA the TLS handshake must succeed first, so
    the refusal also proves the certificate is valid for the service address.
    """
    ca_on_host = "/tmp/test-database-ca.crt"
    ca_pem = (credentials_dir.parent / "pki" / "ca.crt").read_text()
    host.run("printf '%%s' %s > %s", ca_pem, ca_on_host)
    result = host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -X -At -c 'SELECT 1' %s",
        credential(PASSWORD_FILES[role]),
        f"host={service_address} port={PORT} dbname={DATABASE} user={role} "
        f"sslmode={sslmode} sslrootcert={ca_on_host}",
    )
    assert result.rc != 0
    assert (
        f'no pg_hba.conf entry for host "{service_address}", user "{role}", '
        f'database "{DATABASE}", {encryption}' in result.stderr
    )


def test_public_has_no_privilege_on_database(host: Any) -> None:
    grants = query(
        host,
        "SELECT count(*) FROM pg_database, aclexplode(datacl) AS acl "
        f"WHERE datname = '{DATABASE}' AND acl.grantee = 0",
    )
    assert grants == "0"


def test_public_has_no_privilege_on_schema_public(host: Any) -> None:
    grants = query(
        host,
        "SELECT count(*) FROM pg_namespace, aclexplode(nspacl) AS acl "
        "WHERE nspname = 'public' AND acl.grantee = 0",
        DATABASE,
    )
    assert grants == "0"


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (f"has_database_privilege('{RUNTIME}', '{DATABASE}', 'CONNECT')", "t"),
        (f"has_database_privilege('{RUNTIME}', '{DATABASE}', 'CREATE')", "f"),
        (f"has_database_privilege('{RUNTIME}', '{DATABASE}', 'TEMPORARY')", "f"),
        (f"has_schema_privilege('{RUNTIME}', 'public', 'USAGE')", "t"),
        (f"has_schema_privilege('{RUNTIME}', 'public', 'CREATE')", "f"),
        (f"has_schema_privilege('{OWNER}', 'public', 'CREATE')", "t"),
    ],
)
def test_runtime_role_database_and_schema_privileges(host: Any, check: str, expected: str) -> None:
    assert query(host, f"SELECT {check}", DATABASE) == expected


@pytest.mark.parametrize("table", ["requests", "responses"])
def test_table_exists_owned_by_owner(host: Any, table: str) -> None:
    owner = query(
        host,
        f"SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = '{table}'",
        DATABASE,
    )
    assert owner == OWNER


def test_responses_reference_requests_on_delete_cascade(host: Any) -> None:
    actions = query(
        host,
        "SELECT confdeltype FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid = 'public.responses'::regclass "
        "AND confrelid = 'public.requests'::regclass",
        DATABASE,
    )
    assert actions.splitlines() == ["c"]


@pytest.mark.parametrize(("table", "column"), INDEXES)
def test_column_is_indexed(host: Any, table: str, column: str) -> None:
    indexes = query(
        host,
        "SELECT count(*) FROM pg_index AS i JOIN pg_attribute AS a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        f"WHERE i.indrelid = 'public.{table}'::regclass AND a.attname = '{column}'",
        DATABASE,
    )
    assert int(indexes) >= 1


@pytest.mark.parametrize("table", ["requests", "responses"])
@pytest.mark.parametrize(
    ("privilege", "expected"),
    [
        ("SELECT", "t"),
        ("INSERT", "t"),
        ("UPDATE", "f"),
        ("DELETE", "f"),
        ("TRUNCATE", "f"),
        ("REFERENCES", "f"),
        ("TRIGGER", "f"),
    ],
)
def test_runtime_role_table_privileges(
    host: Any, table: str, privilege: str, expected: str
) -> None:
    granted = query(
        host, f"SELECT has_table_privilege('{RUNTIME}', 'public.{table}', '{privilege}')", DATABASE
    )
    assert granted == expected


def test_runtime_role_can_use_every_sequence(host: Any) -> None:
    missing = query(
        host,
        # CASE: has_sequence_privilege must never see a table, whatever order the planner picks.
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND CASE "
        f"WHEN relkind = 'S' THEN NOT has_sequence_privilege('{RUNTIME}', oid, 'USAGE') "
        "ELSE false END",
        DATABASE,
    )
    assert missing == "0"
