"""Realistic facts the evidence role's remote plays hand to the controller.

What tasks/gateway.yml and tasks/database.yml hand over (evidence_gateway,
evidence_database) on a healthy deployment, built from raw material in data/:
``systemctl show`` output, the app's ``db_connected`` journal lines (llm_gateway.events
format), its multiprocess ``/metrics`` text, and psql's JSON rows of the report queries
(captured from a PostgreSQL server holding the app's schema and one chat call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"

# The chat call; psql_rows.json holds its request row and its response row.
REQUEST_ID = "0b9f5b2e-3c1e-4a63-9d7e-51f0c2a4e8d1"
# ActiveEnterTimestamp in the systemctl_show_*.txt samples.
STARTED = 1764499502
# Values the bundle must not contain (like the lab's generated ones).
SECRETS = ["Zq8vN3xLr5TfW2kP9sYb4HcJ7mQd6GaE1uVo0iRt", "owner-pw-4Kd9sLq2", "user-pw-8Hq3mZx7"]


def read(name: str) -> str:
    return (DATA / name).read_text()


def gateway_facts() -> dict[str, Any]:
    """evidence_gateway as tasks/gateway.yml hands it over from a healthy gateway host."""
    return {
        "host": "molecule-gateway",
        "error": "",
        "unit_name": "llm-gateway.service",
        "unit_status": "● llm-gateway.service - LLM gateway\n     Active: active (running)",
        "unit_status_rc": 0,
        "unit_status_stderr": "",
        "unit_show": read("systemctl_show_active.txt"),
        "clock": STARTED + 120,
        "db_connect_lines": read("journal_db_connected.txt").splitlines(),
        "db_connect_stderr": "",
        "journal_since": f"@{STARTED}",
        "app_version": "0.4.0",
        "chat": {
            "request": {
                "method": "POST",
                "url": "http://127.0.0.1:4000/v1/chat/completions",
                "headers": {
                    "Authorization": "Bearer <redacted>",
                    "Content-Type": "application/json",
                },
                "body": {"model": "fake-gpt", "max_tokens": 16, "user": "evidence-playbook"},
            },
            "status": 200,
            "error": "",
            "headers": {
                "X-Request-ID": REQUEST_ID,
                "X-DB-Overhead": "0.04ms",
                "X-Total-Latency": "14.27ms",
                "Content-Type": "application/json",
            },
            "response": {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "fake-gpt",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}}],
                "usage": {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21},
            },
        },
        "db_stats_status": 200,
        "db_stats": {"rows": {"requests": 7, "responses": 7}, "log_mode": "async"},
        "metrics_status": 200,
        "metrics": read("metrics.txt"),
        "health_status": 200,
        "health": {"status": "healthy"},
    }


def database_facts() -> dict[str, Any]:
    """evidence_database as tasks/database.yml hands it over from a healthy database host."""
    return {
        "host": "molecule-db",
        "error": "",
        "request_id": REQUEST_ID,
        "row_wait_attempts": 1,
        "settings": {
            "db_name": "litellm_db",
            "app_user": "litellm_user",
            "password_roles": ["litellm_user", "litellm_owner"],
        },
        "rows_sql": "SELECT json_build_object(...)",
        "rows": read("psql_rows.json"),
        "rows_error": "",
        "reports": {
            "requests_head": f"SELECT ...\n  7 | {REQUEST_ID} | POST | ...\n",
            "responses_head": f"SELECT ...\n  6 | 7 | {REQUEST_ID} | 200 | ...\n",
            "join_check": (
                f"SELECT ...\n  7 | {REQUEST_ID} | fake-gpt | 200 | 6 | 200 | ...\n"
                "FOREIGN KEY (request_id_fk) REFERENCES requests(id) ON DELETE CASCADE\n"
            ),
            "db_security": "SELECT ...\n litellm_user  | SCRAM-SHA-256\n",
        },
        "report_errors": {
            "requests_head": "",
            "responses_head": "",
            "join_check": "",
            "db_security": "",
        },
    }


def with_rows(database: dict[str, Any], change) -> dict[str, Any]:
    """The database facts with psql's JSON rows changed by change(rows)."""
    rows = json.loads(database["rows"])
    change(rows)
    return {**database, "rows": json.dumps(rows)}
