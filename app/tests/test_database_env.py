"""The database from libpq's variables (PG*), `llm-gateway migrate [--check]
[--password-stdin]` as the deployment runs it, and a password that must be passed intact
and never shown."""

import os
import subprocess
import sys

import orjson
import pytest
from ports import free_port

from conftest import PASSWORD_GROUP, all_stored_once, new_database, query
from helpers import CHAT_BODY, wait_until

OWNER = "gw_owner"
# Everything a URL would have to encode, and an encoded sequence that must stay as it is.
PASSWORD = "p%w/or@d: with %25 spaces"
WRONG_PASSWORD = "wr%ng/p@ss: word"


@pytest.fixture(scope="module")
def owner(pg_cluster) -> str:
    """A schema owner that must give its password (pg_cluster's PASSWORD_GROUP)."""
    conn = pg_cluster.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
            cur.execute(f"CREATE ROLE {OWNER} LOGIN IN ROLE {PASSWORD_GROUP} PASSWORD %s",
                        (PASSWORD,))  # fmt: skip
    finally:
        conn.close()
    return OWNER


@pytest.fixture
def empty_database(pg_cluster, owner) -> str:
    name = new_database(pg_cluster, "template0")
    pg_cluster.execute(f"ALTER DATABASE {name} OWNER TO {owner}")
    return name


def pg_env(pg_cluster, database: str, **changes: str | None) -> dict[str, str]:
    """The variables the deployment writes: unencoded parts, TLS verified."""
    env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(pg_cluster.port),
        "PGDATABASE": database,
        "PGUSER": OWNER,
        "PGPASSWORD": PASSWORD,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(pg_cluster.ca_cert),
        **changes,
    }
    return {name: value for name, value in env.items() if value is not None}


def migrate(env: dict[str, str], *args: str, stdin: str | None = None):
    base = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "llm_gateway.cli", "migrate", *args],
        env={**base, **env},
        input=stdin,
        capture_output=True,
        text=True,
    )


def test_migrate_and_check_from_pg_variables(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database)
    behind = migrate(env, "--check")
    assert (behind.returncode, behind.stdout) == (3, "behind: database at none, code at 0003\n")
    done = migrate(env)
    assert done.returncode == 0, done.stderr
    current = migrate(env, "--check")
    assert (current.returncode, current.stdout) == (0, "current: database at 0003\n")
    # Run as the owner, over TLS: the tables are the owner's.
    owners = query(pg_cluster, empty_database, "SELECT DISTINCT tableowner FROM pg_tables"
                   " WHERE tablename IN ('requests', 'responses')")  # fmt: skip
    assert owners == [(OWNER,)]


def test_check_names_both_revisions_and_changes_nothing(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database)
    assert migrate(env, "0001").returncode == 0
    check = migrate(env, "--check")
    assert (check.returncode, check.stdout) == (3, "behind: database at 0001, code at 0003\n")
    assert query(pg_cluster, empty_database, "SELECT version_num FROM alembic_version") == [
        ("0001",)
    ]


def test_check_fails_on_a_revision_the_code_does_not_know(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database)
    assert migrate(env).returncode == 0
    pg_cluster.execute("UPDATE alembic_version SET version_num = '0099'", empty_database)
    check = migrate(env, "--check")
    assert check.returncode == 1
    assert check.stderr == "migrate: database at 0099, which this code does not know\n"


def test_password_from_stdin_overrides_the_environment(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database, PGPASSWORD=WRONG_PASSWORD)
    check = migrate(env, "--check", "--password-stdin", stdin=PASSWORD + "\nignored\n")
    assert (check.returncode, check.stdout) == (3, "behind: database at none, code at 0003\n")
    done = migrate(env, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    # The same for a DATABASE_URL, which then needs no password of its own.
    url = pg_cluster.url(empty_database, user=OWNER)
    again = migrate({"DATABASE_URL": url}, "--check", "--password-stdin", stdin=PASSWORD + "\n")
    assert (again.returncode, again.stdout) == (0, "current: database at 0003\n")


def test_a_wrong_or_missing_password_is_one_line_without_it(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database, PGPASSWORD=None)
    wrong = migrate(env, "--check", "--password-stdin", stdin=WRONG_PASSWORD + "\n")
    missing = migrate(env, "--check")
    for result in (wrong, missing):
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith("migrate: cannot connect to the database: ")
        assert result.stderr.count("\n") == 1
        assert WRONG_PASSWORD not in result.stderr and PASSWORD not in result.stderr
    assert "password authentication failed" in wrong.stderr
    empty = migrate(env, "--password-stdin", stdin="")
    assert (empty.returncode, empty.stderr.count("\n")) == (2, 1)


def test_check_without_a_server_is_an_error(pg_cluster, empty_database):
    env = pg_env(pg_cluster, empty_database, PGPORT=str(free_port()))
    check = migrate(env, "--check")
    assert check.returncode == 1
    assert check.stderr.startswith("migrate: cannot connect to the database: ")
    assert check.stderr.count("\n") == 1


def test_the_database_named_twice_stops_migrate_and_the_gateway(
    pg_cluster, empty_database, start_gateway
):
    both = {**pg_env(pg_cluster, empty_database), "DATABASE_URL": pg_cluster.url(empty_database)}
    result = migrate(both, "--check")
    assert result.returncode == 2
    assert "DATABASE_URL and PGHOST/PGDATABASE are both set" in result.stderr
    with pytest.raises(RuntimeError, match="DATABASE_URL and PGHOST/PGDATABASE are both set"):
        start_gateway(pg_cluster.url(empty_database), extra_env=pg_env(pg_cluster, "x"))


def events(gateway, name: str) -> list[dict]:
    lines = gateway.stderr().splitlines()
    return [orjson.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith(name + " ")]


def test_gateway_from_pg_variables_logs_without_the_password(
    pg_cluster, empty_database, start_gateway
):
    env = pg_env(pg_cluster, empty_database)
    assert migrate(env).returncode == 0
    gw = start_gateway(None, extra_env=env)
    (connected,) = wait_until(lambda: events(gw, "db_connected"))
    assert (connected["db_user"], connected["database"], connected["ssl"]) == (
        OWNER,
        empty_database,
        True,
    )
    request_id = gw.call("POST", "/v1/chat/completions", CHAT_BODY).headers["x-request-id"]
    wait_until(lambda: all_stored_once(pg_cluster, empty_database, [request_id]))

    refused = start_gateway(None, extra_env={**env, "PGPASSWORD": WRONG_PASSWORD})
    (unavailable,) = wait_until(lambda: events(refused, "db_unavailable"))
    assert "password authentication failed" in unavailable["reason"]
    for gateway in (gw, refused):
        stderr = gateway.stderr()
        assert PASSWORD not in stderr and WRONG_PASSWORD not in stderr
