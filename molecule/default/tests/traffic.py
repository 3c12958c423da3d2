"""Steady traffic through the balancer while something changes, and the judgement after:
no failed call, and every answered call logged exactly once (one request row, one response
row). The official `openai` client with its own retries off, plain calls and streams from a
few concurrent clients; bounded, stopped when the change is over."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
from conftest import SHARED, client_tls, psql

CLIENTS = 4
# Long enough for the traffic to straddle the change, short enough to stay cheap.
SETTLE_SECONDS = 5
ROWS_WAIT_SECONDS = 90
MODEL = "fake-gpt"


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
