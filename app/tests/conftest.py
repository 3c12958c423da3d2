"""Fixtures: a real PostgreSQL cluster, fake upstreams and gateway processes.

The cluster is started by the test run itself from the PostgreSQL server binaries
(newest /usr/lib/postgresql/*/bin). initdb and postgres refuse to run as root, so when
the tests run as root the server runs as the ``postgres`` system user via runuser.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml
from ports import free_port, wait_for_port
from throwaway_postgres import PostgresCluster

from llm_gateway.settings import EnvSettings

from helpers import http_call, wait_until

MASTER_KEY = "sk-test-master"
TEAM_KEY = "sk-test-team"
PROVIDER_KEY_ENV = "TEST_PROVIDER_KEY"
# The "long" model's reply: its streamed response.completed event is one SSE line longer
# than aiohttp's default line limit (twice its 256 KiB read buffer).
LONG_REPLY_CHARS = 700_000
# Roles in this group must give their password over TCP; every other role is trusted.
PASSWORD_GROUP = "password_login"
# libpq's variables name a database too: each test names its own, so none may leak in
# from the shell that runs the tests (libpq itself would read them, too).
for _field in EnvSettings.model_fields:
    if _field.startswith("pg"):
        os.environ.pop(_field.upper(), None)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    base = Path(tempfile.mkdtemp(prefix="llmgw-pg-"))
    try:
        # Durability is not what these tests measure; the benchmark keeps the defaults.
        cluster = PostgresCluster.create(base, {"fsync": "off", "full_page_writes": "off"})
    except RuntimeError as exc:
        pytest.exit(str(exc), 2)
    cluster.init()
    hba = cluster.data / "pg_hba.conf"
    hba.write_text(f"host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    cluster.make_tls()
    cluster.start()
    yield cluster
    try:
        cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


_db_counter = itertools.count()


@pytest.fixture(scope="session")
def migrated_template(pg_cluster: PostgresCluster) -> str:
    """A database migrated once with the real CLI; tests clone it (fast, isolated)."""
    pg_cluster.execute("CREATE DATABASE gw_template")
    subprocess.run(
        [sys.executable, "-m", "llm_gateway.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": pg_cluster.url("gw_template")},
        check=True,
        capture_output=True,
    )
    return "gw_template"


@pytest.fixture
def database(pg_cluster: PostgresCluster, migrated_template: str) -> str:
    """A fresh, migrated database for one test; returns its name."""
    return new_database(pg_cluster, migrated_template)


def query(cluster: PostgresCluster, database: str, sql: str, params=()) -> list[tuple]:
    conn = cluster.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def logged_response(cluster: PostgresCluster, database: str, request_id: str, timeout=15.0):
    """(status, response body) of one exchange, once its rows are in."""
    sql = (
        "SELECT p.status_code, p.response_body FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    (row,) = wait_until(lambda: query(cluster, database, sql, (request_id,)), timeout=timeout)
    return row


def stored_counts(pg_cluster, database, ids: list[str]) -> tuple[int, int, int]:
    """(distinct requests found, request rows, response rows) for ``ids``."""
    rows = query(
        pg_cluster,
        database,
        "SELECT count(DISTINCT r.request_id), count(DISTINCT r.id), count(p.id)"
        " FROM requests r LEFT JOIN responses p ON p.request_id_fk = r.id"
        " WHERE r.request_id = ANY(%s)",
        (ids,),
    )
    return rows[0]


def all_stored_once(pg_cluster, database, ids):
    return stored_counts(pg_cluster, database, ids) == (len(ids), len(ids), len(ids))


@dataclass
class Upstream:
    proc: subprocess.Popen
    port: int

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@contextmanager
def _running_upstream(latency_ms: int, chunk_delay_ms: int = 0) -> Iterator[Upstream]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llm_gateway.fake_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--jitter-ms",
            "0",
            "--error-rate",
            "0",
            "--chunk-delay-ms",
            str(chunk_delay_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=proc)
    yield Upstream(proc, port)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[Upstream]:
    with _running_upstream(0) as upstream:
        yield upstream


@pytest.fixture(scope="session")
def slow_upstream() -> Iterator[Upstream]:
    """Answers after 3 s; the 'slow' model's 0.5 s timeout turns that into a 504."""
    with _running_upstream(3000) as upstream:
        yield upstream


@pytest.fixture(scope="session")
def dripping_upstream() -> Iterator[Upstream]:
    """Streams slowly (0.3 s between deltas), so a client can leave mid-stream."""
    with _running_upstream(0, chunk_delay_ms=300) as upstream:
        yield upstream


NGINX = Path("/usr/sbin/nginx")
# nginx as production proxies run it in front of a provider: gzip for JSON and event
# streams, unbuffered streams. Two servers: one that passes the client's Accept-Encoding
# on (and so compresses only what the client accepts), one that asks the upstream for
# gzip whatever the client said and relays the compressed bytes (a proxy or CDN that
# compresses regardless).
NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    gzip on;
    gzip_proxied any;
    gzip_min_length 0;
    gzip_types application/json text/event-stream;
    proxy_http_version 1.1;
    proxy_buffering off;
    server {{
        listen 127.0.0.1:{honest_port};
        location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}
    }}
    server {{
        listen 127.0.0.1:{forcing_port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_set_header Accept-Encoding gzip;
        }}
    }}
}}
"""


@dataclass
class NginxProxies:
    honest_port: int
    forcing_port: int

    @property
    def honest_api_base(self) -> str:
        return f"http://127.0.0.1:{self.honest_port}/v1"

    @property
    def forcing_api_base(self) -> str:
        return f"http://127.0.0.1:{self.forcing_port}/v1"


@pytest.fixture(scope="session")
def nginx(fake_upstream) -> Iterator[NginxProxies]:
    """Debian's nginx in front of the fake upstream (the tests need something we did not
    write between the gateway and its provider)."""
    if not NGINX.exists():
        pytest.exit(f"{NGINX} missing: `make -C app nginx` installs it", 2)
    work = Path(tempfile.mkdtemp(prefix="llmgw-nginx-"))
    proxies = NginxProxies(free_port(), free_port())
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, upstream_port=fake_upstream.port,
                                      **vars(proxies)))  # fmt: skip
    proc = subprocess.Popen([str(NGINX), "-c", str(conf), "-e", str(work / "error.log")])
    try:
        wait_for_port(proxies.honest_port, proc=proc)
        wait_for_port(proxies.forcing_port, proc=proc)
        yield proxies
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Upstreams:
    fast: Upstream
    slow: Upstream
    dripping: Upstream
    nginx: NginxProxies


@pytest.fixture(scope="session")
def upstreams(fake_upstream, slow_upstream, dripping_upstream, nginx) -> Upstreams:
    return Upstreams(fake_upstream, slow_upstream, dripping_upstream, nginx)


def gateway_config(
    upstreams: Upstreams,
    router_settings: dict | None = None,
    litellm_settings: dict | None = None,
    **general,
) -> dict:
    def entry(name, model, api_base, timeout=30, price=(0.000001, 0.000002), **params):
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{model}",
                "api_base": api_base,
                "api_key": f"os.environ/{PROVIDER_KEY_ENV}",
                "timeout": timeout,
                **params,
            },
            "model_info": {"input_cost_per_token": price[0], "output_cost_per_token": price[1]},
        }

    config = {
        "model_list": [
            entry("gpt-test", "fake-model", upstreams.fast.api_base),
            entry("balanced", "fake-a", upstreams.fast.api_base),
            entry("balanced", "fake-b", upstreams.fast.api_base),
            entry("upstream-400", "fake-error-400", upstreams.fast.api_base),
            entry("upstream-429", "fake-error-429", upstreams.fast.api_base),
            entry("upstream-429-ms", "fake-rate-limited-ms", upstreams.fast.api_base),
            entry("upstream-500", "fake-error-500", upstreams.fast.api_base),
            entry("slow", "fake-model", upstreams.slow.api_base, timeout=0.5),
            entry("slow-ok", "fake-model", upstreams.slow.api_base),
            entry("slow-stream", "fake-model", upstreams.slow.api_base, stream_timeout=0.5),
            entry("nested", "fake-nested-300", upstreams.fast.api_base),
            entry("endless", "fake-endless", upstreams.fast.api_base),
            entry("redirecting", "fake-redirect", upstreams.fast.api_base),
            entry("refusal", "fake-refusal", upstreams.fast.api_base),
            entry("stream-error", "fake-stream-error", upstreams.fast.api_base),
            entry("stream-cut", "fake-stream-cut", upstreams.fast.api_base),
            entry("stream-abort", "fake-stream-abort", upstreams.fast.api_base),
            *(
                entry(f"newline-{n}", f"fake-newline-{n}", upstreams.fast.api_base)
                for n in ("cr", "crlf")
            ),
            entry("long", f"fake-long-{LONG_REPLY_CHARS}", upstreams.fast.api_base),
            # One deployment fails, one answers: retries and cooldowns.
            entry("flaky", "fake-error-503", upstreams.fast.api_base),
            entry("flaky", "fake-model", upstreams.fast.api_base),
            entry("ctx-small", "fake-context-exceeded", upstreams.fast.api_base),
            entry("policy", "fake-content-policy", upstreams.fast.api_base),
            # Three deployments, the first failing: the other two share its load.
            entry("trio", "fake-error-503", upstreams.fast.api_base),
            entry("trio", "fake-a", upstreams.fast.api_base),
            entry("trio", "fake-b", upstreams.fast.api_base),
            # One deployment breaks its streams off after the first delta, one answers.
            entry("cut-flaky", "fake-stream-abort", upstreams.fast.api_base),
            entry("cut-flaky", "fake-model", upstreams.fast.api_base),
            *(
                entry(f"encoded-{c}", f"fake-encoded-{c}", upstreams.fast.api_base)
                for c in ("gzip", "deflate", "br", "zstd")
            ),
            entry("via-nginx", "fake-model", upstreams.nginx.honest_api_base),
            {
                "model_name": "azure-gpt",
                "litellm_params": {
                    "model": "azure/fake-azure-deployment",
                    "api_base": f"http://127.0.0.1:{upstreams.fast.port}",
                    "api_version": "2024-10-21",
                    "api_key": f"os.environ/{PROVIDER_KEY_ENV}",
                },
            },
            entry("via-nginx-gzip", "fake-model", upstreams.nginx.forcing_api_base),
            entry("dripping", "fake-model", upstreams.dripping.api_base),
            entry("refused", "fake-model", f"http://127.0.0.1:{free_port()}/v1"),
        ],
        "general_settings": {
            "master_key": "os.environ/GATEWAY_MASTER_KEY",
            "api_keys": [{"alias": "team-a", "key": TEAM_KEY}],
            "max_request_body_bytes": 64 * 1024,
            "writer": {"flush_interval_ms": 10, "retry_interval_s": 0.3},
            **general,
        },
    }
    if router_settings is None and litellm_settings is None:
        # Tests of error answers want the upstream's first failure as the answer.
        router_settings = {"num_retries": 0}
    if router_settings is not None:
        config["router_settings"] = router_settings
    if litellm_settings is not None:
        config["litellm_settings"] = litellm_settings
    return config


@dataclass
class GatewayProcess:
    proc: subprocess.Popen
    port: int
    stderr_path: Path
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def call(self, method: str, path: str, body=None, key: str | None = MASTER_KEY, **kw):
        return http_call(self.port, method, path, body, key, **kw)

    def stop(self) -> int:
        """SIGTERM and wait (uvicorn re-raises the signal after a clean shutdown: -15)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        return self.proc.returncode


def launch_gateway(
    workdir: Path,
    upstreams: Upstreams,
    database_url: str | None,
    extra_env: dict[str, str] | None = None,
    **general,
) -> GatewayProcess:
    """Start a gateway with ``llm-gateway serve`` (uvicorn with the gateway's HTTP limits,
    real lifespan, real stderr). ``extra_env`` sets e.g. GATEWAY_HTTP_* limits."""
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(upstreams, **general)))
    port = free_port()
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config_path),
        "GATEWAY_SPOOL_DIR": str(workdir / "spool"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        PROVIDER_KEY_ENV: "sk-provider-secret",
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    stderr_path = workdir / f"stderr-{port}.log"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_gateway.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    gateway = GatewayProcess(proc, port, stderr_path, workdir)
    try:
        wait_for_port(port, proc=proc)
    except Exception:
        gateway.stop()
        raise RuntimeError(f"gateway did not start:\n{gateway.stderr()}") from None
    return gateway


def new_database(cluster: PostgresCluster, template: str) -> str:
    name = f"gw_test_{next(_db_counter)}"
    cluster.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


@pytest.fixture
def restore_cluster(pg_cluster):
    """Tests that stop PostgreSQL always leave it running."""
    yield pg_cluster
    if not pg_cluster.running():
        pg_cluster.start()


@pytest.fixture
def start_gateway(tmp_path_factory, upstreams):
    """Factory for tests that need their own gateway (settings, database state, signals)."""
    started: list[GatewayProcess] = []

    def start(
        database_url: str | None,
        workdir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        **general,
    ) -> GatewayProcess:
        workdir = workdir or tmp_path_factory.mktemp("gateway")
        gateway = launch_gateway(workdir, upstreams, database_url, extra_env, **general)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def client(gateway):
    """The official openai client, pointed at the module's gateway."""
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=MASTER_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstreams, pg_cluster, migrated_template):
    """A default (async log mode) gateway shared by a module; tests find their own rows
    by X-Request-ID, so they do not depend on each other."""
    database = new_database(pg_cluster, migrated_template)
    # Over verified TLS, as in production (sslmode=verify-full, sslrootcert).
    url = pg_cluster.url(database, tls=True)
    gw = launch_gateway(tmp_path_factory.mktemp("gateway"), upstreams, url)
    gw.database = database
    yield gw
    gw.stop()
