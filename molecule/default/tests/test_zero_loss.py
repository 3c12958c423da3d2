"""Nothing is lost while the deployment changes under load: steady traffic through the
balancer (plain calls and streams, the official `openai` client with its own retries
off) while (a) PostgreSQL restarts and (b) a rolling deploy of a changed app version goes
across every gateway. Each time: no failed call (no 5xx, no connection error, no
truncated stream), and every answered call has exactly one request row and one response
row. Bounded: a few concurrent clients, stopped when the change is over."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import SHARED, ansible_playbook, build_changed_release, client_tls, psql

CLIENTS = 4
# Long enough for the traffic to straddle the change, short enough to stay cheap.
SETTLE_SECONDS = 5
ROWS_WAIT_SECONDS = 90
MODEL = "fake-gpt"

pytestmark = [pytest.mark.host_group("loadbalancer")]


@dataclass
class Traffic:
    """Calls made until stopped; ids of the answered ones, and every failure."""

    client: openai.OpenAI
    user: str
    answered: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plain(self) -> str:
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], user=self.user
        )
        completion = raw.parse()
        assert completion.choices[0].message.content, "empty answer"
        return raw.headers["x-request-id"]

    def stream(self) -> str:
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            user=self.user,
            stream=True,
        )
        finish = None
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish == "stop", f"stream ended without finish_reason stop ({finish})"
        with self.lock:
            self.streams += 1
        return raw.headers["x-request-id"]

    def run(self, stop: threading.Event, streaming: bool) -> None:
        while not stop.is_set():
            try:
                request_id = self.stream() if streaming else self.plain()
            except Exception as exc:  # every kind of failure counts, whatever raised it
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            else:
                with self.lock:
                    self.answered.append(request_id)


@contextmanager
def traffic(address: str, key: str) -> Iterator[Traffic]:
    client = openai.OpenAI(
        base_url=f"https://{address}:{SHARED['gateway_port']}/v1",
        http_client=openai.DefaultHttpxClient(verify=client_tls()),
        api_key=key,
        max_retries=0,  # a retry would hide the failure this test looks for
        timeout=60,
    )
    load = Traffic(client=client, user=f"zero-loss-{uuid.uuid4().hex[:12]}")
    stop = threading.Event()
    threads = [
        threading.Thread(target=load.run, args=(stop, index % 2 == 1), daemon=True)
        for index in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(SETTLE_SECONDS)
    try:
        yield load
        time.sleep(SETTLE_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def rows_per_call(db_host: Any, user: str) -> dict[str, tuple[int, int]]:
    rows = psql(
        db_host,
        "SELECT q.request_id, count(DISTINCT q.id), count(s.id) FROM requests q"
        " LEFT JOIN responses s ON s.request_id_fk = q.id"
        f" WHERE q.\"user\" = '{user}' GROUP BY q.request_id",
    )
    counts = {}
    for line in rows.splitlines():
        request_id, requests, responses = line.split("|")
        counts[request_id] = (int(requests), int(responses))
    return counts


def judge(db_host: Any, load: Traffic, what: str) -> None:
    """Wait for the writers (and any spool replay) to catch up, then count."""
    answered = set(load.answered)
    deadline = time.monotonic() + ROWS_WAIT_SECONDS
    while True:
        counts = rows_per_call(db_host, load.user)
        lost = [rid for rid in answered if min(counts.get(rid, (0, 0))) == 0]
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(2)
    duplicated = [rid for rid in answered if max(counts.get(rid, (0, 0))) > 1]
    print(
        f"{what}: calls={len(load.answered) + len(load.failures)} answered={len(answered)}"
        f" streams={load.streams} failed={len(load.failures)} lost={len(lost)}"
        f" duplicated={len(duplicated)}"
    )
    assert len(answered) > 0
    assert load.failures == [], load.failures[:5]
    assert lost == [], lost[:5]
    assert duplicated == [], {rid: counts[rid] for rid in duplicated[:5]}


@pytest.fixture(scope="module")
def address(hostvars: dict[str, Any]) -> str:
    return hostvars["service_address"]


@pytest.fixture(scope="module")
def master_key(credential: Callable[[str], str]) -> str:
    return credential("gateway_master_key")


def test_a_database_restart_under_load_loses_nothing(
    address: str, master_key: str, group_host: Callable[[str], Any]
) -> None:
    db_host = group_host("database")
    with traffic(address, master_key) as load:
        restarted = db_host.run("systemctl restart postgresql@17-main.service")
        assert restarted.rc == 0, restarted.stderr
    judge(db_host, load, "database restart")


def current_release(gateway: Any) -> str:
    return gateway.file("/opt/llm-gateway/current").linked_to


def test_a_rolling_deploy_under_load_loses_nothing(
    address: str,
    master_key: str,
    group_host: Callable[[str], Any],
    group_hosts: Callable[[str], list[Any]],
    request: pytest.FixtureRequest,
    changed_release: tuple[Path, str],
) -> None:
    release_dir, version = changed_release
    inventory = request.config.option.ansible_inventory
    with traffic(address, master_key) as load:
        deploy = ansible_playbook(
            inventory,
            "gateway.yml",
            f"gateway_release_dir={release_dir}",
            f"gateway_release_version={version}",
        )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    for gateway in group_hosts("gateway"):
        assert current_release(gateway).endswith(version)
    judge(group_host("database"), load, "rolling deploy")


def test_a_release_that_fails_its_health_check_stops_the_rollout(
    address: str,
    master_key: str,
    group_host: Callable[[str], Any],
    group_hosts: Callable[[str], list[Any]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """The first gateway gets a release whose workers cannot start: the play fails there
    with the journal, the other gateways keep their release, and the clients never see it
    (the failed host stays drained at the balancer). Then the operator's fix, deploying the
    build/ release again, brings every gateway back."""
    release_dir, version = build_changed_release(
        tmp_path, "main.py", 'raise RuntimeError("deliberately broken release")'
    )
    inventory = request.config.option.ansible_inventory
    gateways = group_hosts("gateway")
    before = [current_release(gateway) for gateway in gateways]
    try:
        with traffic(address, master_key) as load:
            deploy = ansible_playbook(
                inventory,
                "gateway.yml",
                f"gateway_release_dir={release_dir}",
                f"gateway_release_version={version}",
                "gateway_health_timeout=20",
            )
        # The failure's message goes to stdout or stderr, depending on the result callback.
        said = deploy.stdout + deploy.stderr
        output = deploy.stdout[-4000:] + deploy.stderr[-2000:]
        assert deploy.returncode != 0, output
        assert "did not answer 200 on /api/health" in said, output
        assert "deliberately broken release" in said, "the journal is not shown"
        now = [current_release(gateway) for gateway in gateways]
        # serial: 1, so exactly one gateway got the release; the others kept theirs.
        assert [link.endswith(version) for link in now].count(True) == 1, now
        assert [a == b for a, b in zip(now, before, strict=True)].count(False) == 1, now
        judge(group_host("database"), load, "failed release")
    finally:
        restored = ansible_playbook(inventory, "gateway.yml")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-2000:]
    assert all(not current_release(gateway).endswith(version) for gateway in gateways)
