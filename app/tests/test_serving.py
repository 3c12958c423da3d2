"""The production command: gunicorn with two uvicorn workers, one writer and one
db_connected line per worker, metrics of both, clean stop on SIGTERM."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import yaml
from ports import free_port, wait_for_port

from conftest import MASTER_KEY, PROVIDER_KEY_ENV, all_stored_once, gateway_config
from helpers import CHAT_BODY, http_call, wait_until


def test_gunicorn_with_uvicorn_workers(tmp_path, pg_cluster, database, upstreams):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(gateway_config(upstreams)))
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": pg_cluster.url(database, tls=True),
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        PROVIDER_KEY_ENV: "sk-provider-secret",
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
