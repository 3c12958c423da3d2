"""The gateway host: llm-gateway.service deployed, sandboxed, serving, logging to PostgreSQL.

Effects, not files: the running process's credentials and sandbox (/proc), a real chat call
made inside the container with the master key from the environment file, its rows in the
database, the TLS state of the service's own database sessions (pg_stat_ssl), and the raw
master key searched for in every table and in the journals.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import SHARED, psql

UNIT = "llm-gateway.service"
SERVICE_USER = "llm-gateway"
PORT = SHARED["gateway_port"]
DATABASE = SHARED["postgresql_app_database"]
RUNTIME_ROLE = SHARED["postgresql_app_user"]
ENV_FILE = "/etc/llm-gateway/gateway.env"
CAP_SYS_ADMIN = 21
ROW_WAIT_SECONDS = 10

pytestmark = [
    pytest.mark.host_group("gateway"),
    pytest.mark.systemd_unit(UNIT),
]

# The unit's sandbox as systemd reports it (systemctl show).
HARDENING = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ReadWritePaths", "/var/lib/llm-gateway"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("UMask", "0027"),
    ("User", SERVICE_USER),
    ("Group", SERVICE_USER),
    ("Restart", "on-failure"),
    # Bounds the sockets an idle-connection flood can take (role default).
    ("LimitNOFILE", "16384"),
]

# The same sandbox seen from the kernel's side, in /proc/<MainPID>/status.
PROCESS_STATUS = [
    ("NoNewPrivs", "1"),
    ("Seccomp", "2"),
    ("CapBnd", "0000000000000000"),
    ("CapEff", "0000000000000000"),
    ("CapAmb", "0000000000000000"),
]

# Runs inside the gateway container with its own python3 (the image has no curl): one chat
# call with the master key read from the environment file; prints status, headers, body.
CHAT_CALL = """
import json, sys, urllib.request
env_file, port = sys.argv[1], sys.argv[2]
env = {}
for line in open(env_file):
    name, sep, value = line.strip().partition("=")
    if sep and not name.startswith("#"):
        env[name] = value.strip('"')
request = urllib.request.Request(
    f"http://127.0.0.1:{port}/v1/chat/completions",
    data=json.dumps({"model": "fake-gpt", "messages": [
        {"role": "user", "content": "testinfra says hello"}]}).encode(),
    headers={"Authorization": "Bearer " + env["GATEWAY_MASTER_KEY"],
             "Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as response:
    print(json.dumps({"status": response.status,
                      "headers": {k.lower(): v for k, v in response.headers.items()},
                      "body": json.loads(response.read())}))
"""

HEALTH_CALL = """
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/health", timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


# Hostile requests against the deployed unit, from inside the container: an oversized
# header, a body nested deeper than the log can hold, and a connection that never sends
# its head. Prints one JSON object with what came back.
HOSTILE_CALLS = """
import json, socket, sys, time
env_file, port = sys.argv[1], int(sys.argv[2])
key = next(line.strip().partition("=")[2].strip('"') for line in open(env_file)
           if line.startswith("GATEWAY_MASTER_KEY="))
def exchange(head, body=b""):
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:  # the server may answer and close before it read everything
            sock.sendall(head + body)
        except ConnectionError:
            pass
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionError:
            pass
    return b"".join(chunks)
def post(body, extra=b""):
    return (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: gw\\r\\nConnection: close\\r\\n"
            b"Authorization: Bearer " + key.encode() + b"\\r\\n" + extra +
            b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
chat = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]'
deep = chat + b', "extra": ' + b"[" * 300 + b"]" * 300 + b"}"
results = {
    "big_header": exchange(post(chat + b"}", b"X-Big: " + b"a" * 40000 + b"\\r\\n"), chat + b"}"),
    "deep_body": exchange(post(deep), deep),
}
started = time.monotonic()
results["idle"] = exchange(b"")
results["idle_seconds"] = round(time.monotonic() - started, 1)
print(json.dumps({k: v.decode() if isinstance(v, bytes) else v for k, v in results.items()}))
"""


@pytest.fixture(scope="module")
def db_host(group_host: Any) -> Any:
    return group_host("database")


@pytest.fixture(scope="module")
def main_pid(host: Any) -> int:
    pid = int(host.run("systemctl show --property=MainPID --value %s", UNIT).stdout.strip())
    assert pid > 0, f"{UNIT} has no main process"
    return pid


@pytest.fixture(scope="module")
def master_key(host: Any) -> str:
    for line in host.file(ENV_FILE).content_string.splitlines():
        name, _, value = line.partition("=")
        if name == "GATEWAY_MASTER_KEY":
            return value.strip('"')
    raise AssertionError(f"GATEWAY_MASTER_KEY missing from {ENV_FILE}")


@pytest.fixture(scope="module")
def chat(host: Any) -> dict[str, Any]:
    result = host.run("python3 -c %s %s %s", CHAT_CALL, ENV_FILE, str(PORT))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_unit_active_and_enabled(host: Any) -> None:
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_main_process_runs_as_service_user(host: Any, main_pid: int) -> None:
    assert host.run("ps -o user= -p %s", str(main_pid)).stdout.strip() == SERVICE_USER


def test_workers_run_as_service_user(host: Any, main_pid: int) -> None:
    users = host.run("ps -o user= --ppid %s", str(main_pid)).stdout.split()
    assert users, "gunicorn has no workers"
    assert set(users) == {SERVICE_USER}


@pytest.mark.parametrize(("prop", "expected"), HARDENING)
def test_unit_hardening(host: Any, prop: str, expected: str) -> None:
    assert host.service(UNIT).systemd_properties.get(prop, "") == expected


@pytest.mark.parametrize(("field", "expected"), PROCESS_STATUS)
def test_sandbox_in_effect(host: Any, main_pid: int, field: str, expected: str) -> None:
    status = host.file(f"/proc/{main_pid}/status").content_string
    values = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert values[field].strip() == expected


def test_filesystem_sandbox_in_effect(host: Any, main_pid: int) -> None:
    """ProtectSystem=strict & co. need a mount namespace, which systemd only gets with
    CAP_SYS_ADMIN: a container without it makes systemd skip them silently."""
    pid1_bounding = int(host.file("/proc/1/status").content_string.split("CapBnd:\t")[1][:16], 16)
    if not pid1_bounding & (1 << CAP_SYS_ADMIN):
        pytest.skip("container lacks CAP_SYS_ADMIN: systemd skips mount-namespace sandboxing")
    own_ns = host.run("readlink /proc/%s/ns/mnt", str(main_pid)).stdout.strip()
    assert own_ns != host.run("readlink /proc/1/ns/mnt").stdout.strip()
    mounts = host.file(f"/proc/{main_pid}/mountinfo").content_string.splitlines()
    root_options = next(line.split()[5] for line in mounts if line.split()[4] == "/")
    assert root_options.split(",")[0] == "ro"


def test_port_listening(host: Any) -> None:
    assert host.socket(f"tcp://0.0.0.0:{PORT}").is_listening


def test_health_ok(host: Any) -> None:
    assert host.run("python3 -c %s %s", HEALTH_CALL, str(PORT)).stdout.strip() == "200"


def test_chat_call_succeeds(chat: dict[str, Any]) -> None:
    assert chat["status"] == 200
    assert chat["body"]["choices"][0]["message"]["content"]


@pytest.mark.parametrize("header", ["x-request-id", "x-db-overhead", "x-total-latency"])
def test_chat_call_headers(chat: dict[str, Any], header: str) -> None:
    assert chat["headers"].get(header)


def test_chat_exchange_logged(chat: dict[str, Any], db_host: Any) -> None:
    request_id = chat["headers"]["x-request-id"].replace("'", "")
    sql = (
        "SELECT r.status_code, s.status_code FROM requests r "
        f"JOIN responses s ON s.request_id_fk = r.id WHERE r.request_id = '{request_id}'"
    )
    deadline = time.monotonic() + ROW_WAIT_SECONDS
    row = psql(db_host, sql)
    while not row and time.monotonic() < deadline:
        time.sleep(0.5)
        row = psql(db_host, sql)
    assert row == "200|200", f"no request+response rows for {request_id} in {ROW_WAIT_SECONDS}s"


def test_database_sessions_encrypted(chat: dict[str, Any], db_host: Any) -> None:
    rows = psql(
        db_host,
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        f"WHERE a.application_name = 'llm-gateway' AND a.usename = '{RUNTIME_ROLE}'",
    ).splitlines()
    assert rows, "the gateway has no session on the database"
    assert all(row.startswith("t|TLSv1.") for row in rows), rows


@pytest.fixture(scope="module")
def hostile(host: Any) -> dict[str, Any]:
    result = host.run("python3 -c %s %s %s", HOSTILE_CALLS, ENV_FILE, str(PORT))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_oversized_header_refused_with_431(hostile: dict[str, Any]) -> None:
    head, _, body = hostile["big_header"].partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 431 ")
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_idle_connection_timed_out_with_408(hostile: dict[str, Any]) -> None:
    assert hostile["idle"].startswith("HTTP/1.1 408 ")
    assert hostile["idle_seconds"] < 15  # gateway_http_header_timeout: 10


def test_too_deep_body_is_a_logged_400_and_logging_goes_on(
    hostile: dict[str, Any], chat: dict[str, Any], db_host: Any, host: Any
) -> None:
    head, _, body = hostile["deep_body"].partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400 ")
    assert json.loads(body)["error"]["code"] == "nesting_too_deep"
    request_id = next(
        line.split(": ", 1)[1] for line in head.splitlines() if line.startswith("x-request-id")
    )
    sql = f"SELECT status_code FROM requests WHERE request_id = '{request_id}'"
    deadline = time.monotonic() + ROW_WAIT_SECONDS
    while not (row := psql(db_host, sql)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert row == "400"
    after = json.loads(host.run("python3 -c %s %s %s", CHAT_CALL, ENV_FILE, str(PORT)).stdout)
    assert after["status"] == 200


def test_env_file_permissions(host: Any) -> None:
    env_file = host.file(ENV_FILE)
    assert (env_file.user, env_file.group, env_file.mode) == ("root", SERVICE_USER, 0o640)
    assert not env_file.mode & 0o007


def test_config_dir_permissions(host: Any) -> None:
    config_dir = host.file("/etc/llm-gateway")
    assert (config_dir.user, config_dir.group, config_dir.mode) == ("root", SERVICE_USER, 0o750)


def test_master_key_in_no_table(chat: dict[str, Any], master_key: str, db_host: Any) -> None:
    dump = db_host.run("runuser -u postgres -- pg_dump --data-only %s", DATABASE)
    assert dump.rc == 0, dump.stderr
    assert "testinfra says hello" in dump.stdout, "the dump lacks the logged exchange"
    assert master_key not in dump.stdout


@pytest.mark.parametrize("which", ["gateway", "database"])
def test_master_key_in_no_journal_line(
    chat: dict[str, Any], master_key: str, host: Any, db_host: Any, which: str
) -> None:
    target = host if which == "gateway" else db_host
    journal = target.run("journalctl --no-pager --output=cat")
    assert journal.rc == 0, journal.stderr
    assert master_key not in journal.stdout


@pytest.fixture(scope="module")
def lab_upstream(hostvars: dict[str, Any]) -> str:
    if not hostvars.get("gateway_lab_upstream_enabled"):
        pytest.skip("this environment has no lab upstream")
    return "llm-fake-upstream.service"


def test_lab_upstream_active_and_enabled(host: Any, lab_upstream: str) -> None:
    service = host.service(lab_upstream)
    assert service.is_running
    assert service.is_enabled


def test_lab_upstream_runs_unprivileged(host: Any, lab_upstream: str) -> None:
    pid = host.run("systemctl show --property=MainPID --value %s", lab_upstream).stdout.strip()
    assert host.run("ps -o user= -p %s", pid).stdout.strip() == "llm-fake-upstream"
    status = host.file(f"/proc/{pid}/status").content_string
    assert "NoNewPrivs:\t1" in status
    assert "CapEff:\t0000000000000000" in status


def test_lab_upstream_on_loopback_only(host: Any, lab_upstream: str) -> None:
    assert host.socket("tcp://127.0.0.1:9000").is_listening
    assert not host.socket("tcp://0.0.0.0:9000").is_listening
