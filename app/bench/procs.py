"""Processes the benchmark starts, and a throwaway PostgreSQL.

Everything listens on 127.0.0.1 only and is registered on an ExitStack, so an error or a
Ctrl-C still stops every process and removes the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The tests start PostgreSQL the same way; the cluster helper lives beside them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ports import free_port  # noqa: F401 (the benchmarks take it from here)
from throwaway_postgres import PostgresCluster

STOP_TIMEOUT_S = 40  # gunicorn's graceful timeout (30 s) plus margin for the writer drain


def venv_command(script: str, module: str) -> list[str]:
    """The console script next to this interpreter (the app's venv), else ``python -m``."""
    candidate = Path(sys.executable).parent / script
    return [str(candidate)] if candidate.exists() else [sys.executable, "-m", module]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, all its threads (from /proc, so no psutil)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


class Processes:
    """Starts children in their own sessions (a terminal's Ctrl-C reaches only us) and
    stops them on exit: SIGTERM first, so the gateway drains its writer, then SIGKILL."""

    def __init__(self, stack: contextlib.ExitStack, log_dir: Path):
        self.stack = stack
        self.log_dir = log_dir

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.stack.callback(self.stop, proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_text(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")


def wait_until(check, what: str, proc: subprocess.Popen | None = None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_postgres(stack: contextlib.ExitStack, work: Path) -> str:
    """A throwaway cluster (run as `postgres` when we are root); returns a SQLAlchemy URL.

    Server settings stay at their defaults (fsync and synchronous_commit on), so sync mode
    pays the commit cost a real deployment pays."""
    base = work / "pg"
    base.mkdir()
    cluster = PostgresCluster.create(base)
    cluster.init()
    cluster.start()

    def stop_quietly() -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()

    stack.callback(stop_quietly)
    cluster.execute("CREATE DATABASE bench")
    return cluster.url("bench")


def migrate(env: dict[str, str], revision: str = "head") -> None:
    done = subprocess.run([*venv_command("llm-gateway", "llm_gateway.cli"), "migrate", revision],
                          env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"llm-gateway migrate failed:\n{done.stderr[-2000:]}")


def start_fake_upstream(
    procs: Processes, env: dict[str, str], key: str, port: int, *options: str
) -> subprocess.Popen:
    """The fake upstream with zero latency, requiring ``key``; ready when it answers."""
    cmd = [sys.executable, "-m", "llm_gateway.fake_upstream", "--port", str(port),
           "--latency-ms", "0", "--jitter-ms", "0", *options]  # fmt: skip
    upstream = procs.start("upstream", cmd, {**env, "FAKE_UPSTREAM_API_KEY": key})
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "fake upstream", upstream)
    return upstream


def start_gateway(
    procs: Processes, log_name: str, env: dict[str, str], port: int, workers: int, app: str
) -> subprocess.Popen:
    """gunicorn with the unit's worker class; ready when every worker has connected to
    the database and health answers."""
    cmd = [*venv_command("gunicorn", "gunicorn"), "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--worker-class", "llm_gateway.serving.GatewayWorker",
           "--graceful-timeout", "30", app]  # fmt: skip
    gateway = procs.start(log_name, cmd, env)
    wait_until(
        lambda: (
            procs.log_text(log_name).count("db_connected") >= workers
            and http_ok(f"http://127.0.0.1:{port}/api/health")
        ),
        log_name,
        gateway,
        timeout=60,
    )
    return gateway
