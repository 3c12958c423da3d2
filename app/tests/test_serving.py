"""The production command: gunicorn with two uvicorn workers, one writer and one
db_connected line per worker, metrics of both, clean stop on SIGTERM."""

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import trustme
import yaml
from ports import free_port, wait_for_port

from conftest import (
    MASTER_KEY,
    PROVIDER_KEY_ENV,
    all_stored_once,
    gateway_config,
    logged_response,
)
from helpers import CHAT_BODY, http_call, wait_until


def service_env(tmp_path, pg_cluster, database, upstreams) -> dict[str, str]:
    """The environment the systemd unit gives the service (config written to tmp_path)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(upstreams)))
    return {
        **os.environ,
        "DATABASE_URL": pg_cluster.url(database, tls=True),
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        PROVIDER_KEY_ENV: "sk-provider-secret",
    }


def test_gunicorn_with_uvicorn_workers(tmp_path, pg_cluster, database, upstreams):
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **service_env(tmp_path, pg_cluster, database, upstreams),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),  # as the systemd unit sets it
    }
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [
                str(gunicorn),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--worker-class",
                "llm_gateway.serving.GatewayWorker",
                "--graceful-timeout",
                "30",
                "llm_gateway.main:create_app()",
            ],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, proc=proc)

        def connected_lines():
            lines = [ln for ln in stderr_path.read_text().splitlines() if "db_connected" in ln]
            return lines if len(lines) == 2 else None

        lines = wait_until(connected_lines, timeout=30)
        facts = [orjson.loads(line.split(" ", 1)[1]) for line in lines]
        assert len({f["pid"] for f in facts}) == 2
        assert all(f["ssl"] for f in facts)

        ids = [
            http_call(port, "POST", "/v1/chat/completions", CHAT_BODY, MASTER_KEY).headers[
                "x-request-id"
            ]
            for _ in range(20)
        ]

        def written() -> int:
            reply = http_call(port, "GET", "/api/db-stats", key=MASTER_KEY)
            return reply.json()["writer"]["exchanges_written"]

        # Whichever worker answers, db-stats counts what both committed.
        wait_until(lambda: written() == 20)
        assert [written() for _ in range(4)] == [20] * 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)
    assert all_stored_once(pg_cluster, database, ids)
    assert stderr_path.read_text().count('"event":"shutdown"') == 2


def test_gunicorn_serves_https_with_the_deployments_certificate(
    tmp_path, pg_cluster, database, upstreams
):
    """Without a balancer the gateway role passes --certfile/--keyfile to the same command:
    a client that verifies the CA gets its answer, and the exchange is logged; a plain HTTP
    request to that port gets no answer."""
    ca = trustme.CA(organization_name="llm-gateway test CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    port = free_port()
    env = service_env(tmp_path, pg_cluster, database, upstreams)
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [
            str(gunicorn),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--worker-class",
            "llm_gateway.serving.GatewayWorker",
            "--certfile",
            str(tmp_path / "cert.pem"),
            "--keyfile",
            str(tmp_path / "key.pem"),
            "llm_gateway.main:create_app()",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/v1/chat/completions",
            data=orjson.dumps(CHAT_BODY),
            headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            assert answer.status == 200
            request_id = answer.headers["x-request-id"]
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/liveness", timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(40)
    assert all_stored_once(pg_cluster, database, [request_id])


def start_gunicorn(env: dict, stderr_path: Path, *options: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(gunicorn), "--bind", f"127.0.0.1:{port}", *options,
             "--worker-class", "llm_gateway.serving.GatewayWorker",
             "llm_gateway.main:create_app()"],
            env=env, stderr=stderr, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    wait_for_port(port, proc=proc)
    return proc, port


def test_sigterm_cuts_a_stream_that_outlasts_the_graceful_timeout_and_logs_it(
    tmp_path, pg_cluster, database, upstreams
):
    """gunicorn kills a worker graceful_timeout after SIGTERM; a stream still running
    then must not take the writer's drain and its own row down with it: the worker cuts
    it early enough, logs it (503, what was relayed) and shuts down cleanly."""
    env = {**service_env(tmp_path, pg_cluster, database, upstreams),
           "GATEWAY_HTTP_SHUTDOWN_DRAIN_S": "3"}  # fmt: skip
    stderr_path = tmp_path / "stderr.log"
    proc, port = start_gunicorn(env, stderr_path, "--workers", "1", "--graceful-timeout", "6")
    try:
        wait_until(lambda: http_call(port, "GET", "/api/health").status == 200, timeout=30)
        # The dripping upstream sends three words every 0.3 s: these take 20 s.
        words = " ".join(f"w{i}" for i in range(200))
        body = {**CHAT_BODY, "model": "dripping", "stream": True,
                "messages": [{"role": "user", "content": words}]}  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", orjson.dumps(body),
                     {"Authorization": f"Bearer {MASTER_KEY}"})  # fmt: skip
        answer = conn.getresponse()
        request_id = answer.headers["x-request-id"]
        assert answer.read1(65536).startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        received = b""
        with contextlib.suppress(http.client.HTTPException, OSError):
            while chunk := answer.read1(65536):
                received += chunk
        proc.wait(20)
        assert time.monotonic() - started < 6  # before gunicorn's kill
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"[DONE]" not in received
    assert '"event":"shutdown"' in stderr_path.read_text()
    status, logged = logged_response(pg_cluster, database, request_id)
    assert status == 503
    assert logged["error"]["code"] == "gateway_shutdown"
    assert logged["choices"][0]["message"]["content"].startswith("Fake reply: w0")
