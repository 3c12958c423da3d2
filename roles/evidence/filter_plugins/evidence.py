"""The evidence role's decisions: its SQL, its parsers, its figures and its criteria.

The role's tasks only collect raw material (``systemctl show`` text, journal lines, the
``/metrics`` text of every gateway, HAProxy's ``show stat`` of every balancer, the chat
call, psql output) and render files. Everything judged from that material is
decided here, in plain Python, so that tests/unit/ can test it without hosts. Ansible
loads this file as the role's filter plugin; the tests import it as a module.

Filters (Jinja name -> function):

- ``evidence_queries``: every SQL statement the role runs, built from its settings
- ``evidence_systemctl_show``: ``systemctl show`` output -> {property: value}
- ``evidence_journal_since``: journalctl's --since for the unit's last start
- ``evidence_measure``: every figure, from what the chat, gateway, balancer, database and
  backup plays handed over, against the inventory's gateways and balancers
- ``evidence_backup_wal``: where the newest archived WAL segment is in the repository, from
  ``pgbackrest info --output=json`` (the backup play lists it to learn its time)
- ``evidence_withhold``: the bundle's files, those carrying a secret replaced by a notice
- ``evidence_judge``: the acceptance criteria, each passed or not, with figure and reasons
- ``evidence_verdict``: the overall result and one printable line per criterion
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography import x509

# --- SQL ---------------------------------------------------------------------------------
# The chat call's X-Request-ID is spliced into SQL: only a plain token is used, anything
# else becomes '' (a value no row has). Every other value is quoted as a literal.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


def safe_request_id(value: Any) -> str:
    """The request id if it is a plain token, else '' (which no row has)."""
    text = "" if value is None else str(value)
    return text if _REQUEST_ID.fullmatch(text) else ""


def sql_literal(value: Any) -> str:
    """A PostgreSQL string literal (standard_conforming_strings, the default since 9.1)."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL character cannot be part of an SQL literal")
    return "'" + text.replace("'", "''") + "'"


# Every query of the role, by the report file that prints it. The reports show them as psql
# prints them; the figures are computed from the same queries' rows, fetched as JSON.
# Placeholders (all quoted here): {call} the chat call's request id, {newest} rows per head,
# {database} the application database, {user} the gateway's role, {roles} the password roles.
QUERIES = {
    "requests_head": {
        "requests_newest": """
SELECT id, request_id, method, route, model, status_code, key_alias, "user", created_at
FROM requests
WHERE id IN (SELECT id FROM requests ORDER BY id DESC LIMIT {newest})
   OR request_id = {call}
ORDER BY id DESC""",
        "requests_total": "SELECT count(*) AS requests_total FROM requests",
    },
    "responses_head": {
        "responses_newest": """
SELECT s.id, s.request_id_fk, q.request_id, s.status_code, s.latency_ms,
       s.prompt_tokens, s.completion_tokens, s.tokens_used, s.cost, s.created_at
FROM responses s JOIN requests q ON q.id = s.request_id_fk
WHERE s.id IN (SELECT id FROM responses ORDER BY id DESC LIMIT {newest})
   OR q.request_id = {call}
ORDER BY s.id DESC""",
        "responses_total": "SELECT count(*) AS responses_total FROM responses",
    },
    "join_check": {
        "join_newest": """
SELECT q.id, q.request_id, q.model, q.status_code AS request_status,
       s.id AS response_id, s.status_code AS response_status, s.latency_ms, s.tokens_used, s.cost
FROM requests q LEFT JOIN responses s ON s.request_id_fk = q.id
WHERE q.id IN (SELECT id FROM requests ORDER BY id DESC LIMIT {newest})
   OR q.request_id = {call}
ORDER BY q.id DESC""",
        "orphans": """
SELECT
  (SELECT count(*) FROM requests q
   WHERE NOT EXISTS (SELECT 1 FROM responses s WHERE s.request_id_fk = q.id))
    AS requests_without_response,
  (SELECT count(*) FROM responses s
   WHERE NOT EXISTS (SELECT 1 FROM requests q WHERE q.id = s.request_id_fk))
    AS responses_without_request""",
        "foreign_keys": """
SELECT conname, conrelid::regclass AS table_name, confrelid::regclass AS references_table,
       pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE contype = 'f' AND conrelid = 'responses'::regclass
  -- The key itself, not the copies PostgreSQL keeps per partition of a partitioned requests.
  AND conparentid = 0
ORDER BY conname""",
    },
    "db_security": {
        "settings": """
SELECT name, setting FROM pg_settings
WHERE name IN ('server_version', 'password_encryption', 'ssl', 'ssl_min_protocol_version',
               'listen_addresses')
ORDER BY name""",
        # The kind of verifier only: a prefix of an md5 verifier is still part of a hash.
        "verifiers": """
SELECT r.rolname,
       CASE WHEN a.oid IS NULL THEN 'no such role'
            WHEN a.rolpassword IS NULL THEN 'no password'
            WHEN a.rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'SCRAM-SHA-256'
            WHEN a.rolpassword LIKE 'md5%' THEN 'md5'
            ELSE 'other' END AS verifier_kind
FROM unnest(ARRAY[{roles}]::text[]) AS r(rolname)
LEFT JOIN pg_authid a ON a.rolname = r.rolname
ORDER BY r.rolname""",
        "app_sessions": """
SELECT a.pid, a.usename, a.application_name, a.client_addr, s.ssl, s.version, s.cipher
FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.datname = {database} AND a.usename = {user}
ORDER BY a.pid""",
        "hba_rules": """
SELECT line_number, type, database, user_name, address, netmask, auth_method
FROM pg_hba_file_rules ORDER BY line_number""",
    },
    # The log tables' partitions, read from the catalog, and pg_partman's settings for them.
    "partitions": {
        "partition_sets": """
SELECT parent_table, control, partition_interval,
       extract(epoch FROM partition_interval::interval)::bigint AS interval_seconds, premake,
       coalesce(retention, 'none (keep everything)') AS retention,
       extract(epoch FROM retention::interval)::bigint AS retention_seconds,
       retention_schema, maintenance_order, automatic_maintenance
FROM partman.part_config
WHERE parent_table IN ('public.requests', 'public.responses')
ORDER BY maintenance_order NULLS LAST, parent_table""",
        "partitions": """
SELECT i.inhparent::regclass::text AS parent_table, c.relname AS partition,
       pg_get_expr(c.relpartbound, c.oid) AS bounds,
       b.bound[1]::timestamptz AS range_from, b.bound[2]::timestamptz AS range_to,
       pg_size_pretty(pg_total_relation_size(c.oid)) AS size,
       pg_total_relation_size(c.oid) AS bytes,
       greatest(c.reltuples, 0)::bigint AS rows_estimated
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                               'FROM \\(''([^'']*)''\\) TO \\(''([^'']*)''\\)') AS b(bound) ON true
WHERE i.inhparent IN (to_regclass('public.requests'), to_regclass('public.responses'))
ORDER BY parent_table, range_from NULLS FIRST""",
        "partition_clock": "SELECT now() AS checked_at",
    },
}
# Polled until the writer has committed the chat call's request and its response.
ROW_WAIT = """
SELECT count(*) FROM requests q JOIN responses s ON s.request_id_fk = q.id
WHERE q.request_id = {call}"""


def _parameters(
    request_id: Any, db_name: Any, app_user: Any, password_roles: Iterable[Any], head_rows: Any
) -> dict[str, str]:
    return {
        "call": sql_literal(safe_request_id(request_id)),
        "newest": str(int(head_rows)),
        "database": sql_literal(db_name),
        "user": sql_literal(app_user),
        "roles": ", ".join(sql_literal(role) for role in password_roles),
    }


def report_queries(
    request_id: Any, db_name: Any, app_user: Any, password_roles: Iterable[Any], head_rows: Any
) -> dict[str, dict[str, str]]:
    """QUERIES with the values filled in: {report file stem: {query name: sql}}."""
    values = _parameters(request_id, db_name, app_user, password_roles, head_rows)
    return {
        report: {name: sql.strip().format(**values) for name, sql in named.items()}
        for report, named in QUERIES.items()
    }


def queries(
    request_id: Any, db_name: Any, app_user: Any, password_roles: Iterable[Any], head_rows: Any
) -> dict[str, Any]:
    """The filter ``evidence_queries``: what tasks/database.yml runs, ready for psql.

    - request_id: the id the queries look for ('' when the chat call gave no usable one)
    - row_wait: the count of the call's joined rows, polled while the writer commits
    - reports: {report: ['--command=<sql>;', ...]} for ``psql --echo-queries``
    - rows: one statement returning every report query's rows as one JSON object
    """
    by_report = report_queries(request_id, db_name, app_user, password_roles, head_rows)
    named = {name: sql for report in by_report.values() for name, sql in report.items()}
    values = _parameters(request_id, db_name, app_user, password_roles, head_rows)
    rows = ",\n".join(
        f"  {sql_literal(name)}, (SELECT coalesce(json_agg(report_row), '[]'::json)"
        f" FROM (\n{sql}\n) AS report_row)"
        for name, sql in named.items()
    )
    return {
        "request_id": safe_request_id(request_id),
        "row_wait": ROW_WAIT.strip().format(**values),
        "reports": {
            report: [f"--command={sql};" for sql in named_sql.values()]
            for report, named_sql in by_report.items()
        },
        "rows": f"SELECT json_build_object(\n{rows}\n)",
    }


# --- small helpers -------------------------------------------------------------------------
def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def shown(value: Any) -> str:
    """A figure as an operator reads it: '?' when not measured, decimals without exponent."""
    if value is None or value == "":
        return "?"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return format(Decimal(repr(value)), "f")
    return str(value)


def _utc(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- systemd -------------------------------------------------------------------------------
_PROPERTY = re.compile(r"^([A-Za-z][A-Za-z0-9]*)=(.*)$", re.MULTILINE)
# MemoryCurrent of a unit without memory accounting (older systemd prints this, newer '[not set]').
_UINT64_MAX = 2**64 - 1


def systemctl_show(text: Any) -> dict[str, str]:
    """``systemctl show --property=...`` output -> {property: value} (values stripped)."""
    return {key: value.strip() for key, value in _PROPERTY.findall(str(text or ""))}


def unit_started(properties: Mapping[str, Any]) -> int | None:
    """ActiveEnterTimestamp (--timestamp=unix: '@<seconds>') as epoch seconds, None if never."""
    value = str(properties.get("ActiveEnterTimestamp") or "").strip().lstrip("@")
    started = _int(value)
    return started if started else None


def journal_since(properties: Mapping[str, Any]) -> str:
    """journalctl --since for the unit's last start; 'today' when it never became active."""
    started = unit_started(properties)
    return f"@{started}" if started else "today"


def service_figures(gateway: Mapping[str, Any], host: Any = None) -> dict[str, Any]:
    """The unit's figures on one gateway; host names it when its play did not report."""
    properties = systemctl_show(gateway.get("unit_show"))
    started = unit_started(properties)
    clock = _int(gateway.get("clock"))
    memory = _int(properties.get("MemoryCurrent"))
    if memory is not None and (memory < 0 or memory >= _UINT64_MAX):
        memory = None
    active, sub = properties.get("ActiveState"), properties.get("SubState")
    return {
        "reported": bool(gateway),
        "host": gateway.get("host") or host or None,
        "unit": gateway.get("unit_name") or properties.get("Id") or None,
        "collection_error": gateway.get("error") or "",
        "properties": properties,
        "load_state": properties.get("LoadState"),
        "active_state": active,
        "sub_state": sub,
        "running": active == "active" and sub == "running",
        "main_pid": _int(properties.get("MainPID")),
        "restarts": _int(properties.get("NRestarts")),
        "started_at": started,
        "started_at_utc": _utc(started),
        "uptime_s": clock - started if started and clock and clock >= started else None,
        "memory_bytes": memory,
        "memory_mib": round(memory / 1048576, 1) if memory is not None else None,
        "journal_since": gateway.get("journal_since") or journal_since(properties),
    }


# --- the app's db_connected journal line -----------------------------------------------------
# llm_gateway.events.emit_event writes '<event> {json}' to stderr; the journal prefixes it
# (--output=short-iso-precise: '<time> <host> <identifier>[<pid>]: ').
_DB_CONNECTED = re.compile(r"(?:^|\s)db_connected (\{.*\})\s*$")


def db_connected(lines: Iterable[Any]) -> dict[str, Any]:
    """The workers' ``db_connected`` events among journal lines.

    A line that only mentions the word (a traceback, grep's own notes) is not an event; an
    event whose JSON cannot be read is counted as unreadable (it proves no TLS).
    """
    events: list[dict[str, Any]] = []
    unreadable = 0
    for line in lines or []:
        match = _DB_CONNECTED.search(str(line))
        if match is None:
            continue
        try:
            facts = json.loads(match.group(1))
        except ValueError:
            unreadable += 1
            continue
        if not isinstance(facts, dict) or facts.get("event", "db_connected") != "db_connected":
            unreadable += 1
            continue
        events.append(facts)
    without_tls = [event for event in events if event.get("ssl") is not True]
    return {
        "events": len(events),
        "tls": len(events) - len(without_tls),
        "without_tls": [
            f"pid {shown(event.get('pid'))} ssl {shown(event.get('ssl'))}" for event in without_tls
        ],
        "unreadable": unreadable,
        "last": events[-1] if events else {},
    }


# --- the chat call ---------------------------------------------------------------------------
def chat_figures(chat: Mapping[str, Any]) -> dict[str, Any]:
    headers = chat.get("headers") or {}
    response = chat.get("response")
    usage = (response.get("usage") if isinstance(response, Mapping) else None) or {}
    return {
        "status": _int(chat.get("status")),
        "error": chat.get("error") or "",
        "request_id": headers.get("X-Request-ID") or "",
        "total_latency": headers.get("X-Total-Latency") or "",
        "db_overhead": headers.get("X-DB-Overhead") or "",
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
    }


def entry_figures(entry: Mapping[str, Any], balancer_hosts: Iterable[Any]) -> dict[str, Any]:
    """Where the chat call was made: the host, whether it is a balancer, the URL it called."""
    request = (entry.get("chat") or {}).get("request") or {}
    host = entry.get("host") or None
    return {
        "reported": bool(entry),
        "host": host,
        "via": None if host is None else "balancer" if host in balancer_hosts else "gateway",
        "method": request.get("method") or "",
        "url": request.get("url") or "",
        "collection_error": entry.get("error") or "",
    }


# --- Prometheus text (GET /metrics) ------------------------------------------------------------
_SAMPLE = re.compile(
    r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
    r"\s+(?P<value>\S+)"
)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

# The app's metrics (app/src/llm_gateway/metrics.py) the summary shows, with what they mean.
HISTOGRAMS = {
    "llm_gateway_db_overhead_seconds": "time the request path spent handing the exchange to"
    " the logger (X-DB-Overhead)",
    "llm_gateway_writer_batch_commit_seconds": "the writer's batch commits",
    "llm_gateway_request_latency_seconds": "whole chat requests, all models",
}
# Counters and gauges: summed over their labels (in multiprocess mode the gauges are
# already aggregated over the workers: livesum, livemin, livemax).
COUNTERS = {
    "llm_gateway_requests_total": "chat requests answered, all models and statuses",
    "llm_gateway_writer_exchanges_total": "exchanges committed to the database",
    "llm_gateway_writer_failures_total": "failed batch commits",
    "llm_gateway_spooled_total": "exchanges written to the on-disk spool",
    "llm_gateway_writer_quarantined_total": "exchanges logged reduced or not at all",
    "llm_gateway_exchanges_lost_total": "exchanges answered that will never reach the database",
    "llm_gateway_writer_restarts_total": "writer tasks restarted after a failure",
    "llm_gateway_writer_queue_depth": "exchanges waiting for the writer now",
    "llm_gateway_spool_backlog": "exchanges on disk awaiting replay now",
    "llm_gateway_writer_up": "1 while every live worker's writer runs",
    "llm_gateway_writer_stalled": "1 while some worker's writer is not draining",
}


def parse_metrics(text: Any) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text format: (name, labels, value); comments skipped."""
    samples = []
    for line in str(text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        labels = {
            key: raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for key, raw in _LABEL.findall(match.group("labels") or "")
        }
        samples.append((match.group("name"), labels, value))
    return samples


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.6g}"


def histogram(samples: Iterable[tuple[str, dict[str, str], float]], name: str) -> dict[str, Any]:
    """A histogram summed over its other labels, with p50 and p99 as bucket bounds.

    A percentile is the upper bound of the first bucket whose cumulative count reaches the
    quantile: as precise as the buckets, never an interpolation ('<= 0.05 ms'; '> 10 ms'
    when it falls in the +Inf bucket; 'no sample' before the first observation).
    """
    buckets: dict[float, float] = {}
    count = total = 0.0
    for sample, labels, value in samples:
        if sample == f"{name}_bucket" and "le" in labels:
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
        elif sample == f"{name}_count":
            count += value
        elif sample == f"{name}_sum":
            total += value
    bounds = sorted(buckets)
    observations = buckets.get(math.inf, count)
    finite = [bound for bound in bounds if math.isfinite(bound)]

    def percentile(quantile: float) -> tuple[str, float | None]:
        if observations <= 0:
            return "no sample", None
        for bound in bounds:
            if buckets[bound] >= quantile * observations:
                if math.isinf(bound):
                    break
                return f"<= {_ms(bound)} ms", float(_ms(bound))
        return (f"> {_ms(finite[-1])} ms" if finite else "above every bucket"), None

    p50, p50_ms = percentile(0.5)
    p99, p99_ms = percentile(0.99)
    return {
        "metric": name,
        "about": HISTOGRAMS.get(name, ""),
        "count": int(observations),
        "sum_seconds": total,
        "p50": p50,
        "p99": p99,
        "p50_ms_at_most": p50_ms,
        "p99_ms_at_most": p99_ms,
        "buckets": [["+Inf" if math.isinf(b) else f"{b:g}", int(buckets[b])] for b in bounds],
    }


def metrics_figures(text: Any, http_status: Any = None) -> dict[str, Any]:
    """What the summary shows from GET /metrics (all workers: multiprocess mode)."""
    samples = parse_metrics(text)
    counters = []
    for name, about in COUNTERS.items():
        found = [value for sample, _, value in samples if sample == name]
        total = sum(found) if found else None
        counters.append(
            {
                "metric": name,
                "about": about,
                "value": int(total) if total is not None and total.is_integer() else total,
            }
        )
    return {
        "http_status": _int(http_status),
        "samples": len(samples),
        "histograms": [histogram(samples, name) for name in HISTOGRAMS],
        "counters": counters,
    }


# --- HAProxy: show stat on the admin socket ---------------------------------------------------
# One CSV line per frontend, backend and server, under a header line '# pxname,svname,...'
# (every line ends with a comma). A server's status is UP, DOWN, MAINT, DRAIN, NOLB,
# 'no check', or a transition such as 'UP 1/3' (failing checks) and 'DOWN 1/2' (recovering);
# 'MAINT (via b/s)' when it tracks another server. Only UP serves new requests as it should.
_PROXY_ROWS = ("FRONTEND", "BACKEND")
# The 'type' column: 0 frontend, 1 backend, 2 server, 3 listener.
_SERVER_TYPE = "2"
SERVER_UP = "UP"


def haproxy_stat(text: Any) -> list[dict[str, str]]:
    """``show stat`` output -> one {column: value} per line; [] when there is no header."""
    lines = str(text or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# pxname,")), None)
    if start is None:
        return []
    body = [lines[start][2:]] + [line for line in lines[start + 1 :] if line.strip()]
    return [
        {key: (value or "").strip() for key, value in row.items() if key}
        for row in csv.DictReader(body)
    ]


def backend_servers(rows: Iterable[Mapping[str, str]], backend: Any) -> list[dict[str, Any]]:
    """The servers of one backend, in HAProxy's order, with what the criterion shows."""
    servers = []
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in _PROXY_ROWS:
            continue
        if row.get("type") not in (None, "", _SERVER_TYPE):
            continue
        servers.append(
            {
                "name": row.get("svname") or "",
                "status": row.get("status") or "",
                # '* ' marks a check in progress; the result shown is the previous one.
                "check_status": (row.get("check_status") or "").lstrip("* "),
                "check_code": row.get("check_code") or "",
                "check_desc": row.get("check_desc") or "",
                "address": row.get("addr") or "",
                "sessions_now": _int(row.get("scur")),
                "sessions_total": _int(row.get("stot")),
                "last_change_s": _int(row.get("lastchg")),
            }
        )
    return servers


def _server_shown(server: Mapping[str, Any]) -> str:
    """'gw1 UP', 'gw2 DOWN (check L4CON)': the last check's result when it is not UP."""
    check = " ".join(part for part in (server["check_status"], server["check_code"]) if part)
    status = server["status"] or "?"
    if check and server["status"] != SERVER_UP:
        return f"{server['name']} {status} (check {check})"
    return f"{server['name']} {status}"


def balancer_figures(
    balancer: Mapping[str, Any], host: Any, gateways: Iterable[Any]
) -> dict[str, Any]:
    """One balancer's backend against the inventory's gateways."""
    gateways = [str(name) for name in gateways]
    rows = haproxy_stat(balancer.get("stat"))
    backend = balancer.get("backend") or None
    servers = backend_servers(rows, backend)
    names = [server["name"] for server in servers]
    rc = _int(balancer.get("stat_rc"))
    stat_error = ""
    if balancer and rc != 0:
        stat_error = "; ".join(
            part
            for part in (
                f"exit status {shown(rc)}",
                str(balancer.get("stat_stderr") or "").strip(),
                str(balancer.get("error") or "").strip(),
            )
            if part
        )
    elif balancer and not rows:
        stat_error = "no '# pxname,...' header in the output"
    return {
        "reported": bool(balancer),
        "host": balancer.get("host") or host or None,
        "collection_error": balancer.get("error") or "",
        "socket": balancer.get("socket") or None,
        "backend": backend,
        "stat_error": stat_error,
        "backend_found": any(row.get("pxname") == backend for row in rows),
        "servers": servers,
        "missing": [name for name in gateways if name not in names],
        "not_up": [
            server
            for server in servers
            if server["name"] in gateways and server["status"] != SERVER_UP
        ],
        "not_in_inventory": [server for server in servers if server["name"] not in gateways],
    }


# --- the database's rows (the report queries as JSON) ---------------------------------------
# Revision 0003 (partitioned by day) keys the row by (id, created_at); 0002 by id alone.
_CASCADE_FK = re.compile(
    r"REFERENCES (?:public\.)?requests\(id(?:, created_at)?\) ON DELETE CASCADE"
)


def _load_rows(text: Any) -> tuple[dict[str, Any], str]:
    if isinstance(text, Mapping):
        return dict(text), ""
    if not str(text or "").strip():
        return {}, "no rows returned"
    try:
        rows = json.loads(str(text))
    except ValueError as exc:
        return {}, f"rows unreadable: {exc}"
    if not isinstance(rows, dict):
        return {}, "rows unreadable: not a JSON object"
    return rows, ""


PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
)


def certificate_figures(text: str | None, now: datetime) -> dict[str, Any]:
    """Subject, issuer, end and days left of the first PEM certificate in `text` (a file,
    or `openssl s_client` output); `error` says why there is none."""
    found = PEM_CERTIFICATE.search(text or "")
    if not found:
        return {"error": "no certificate"}
    try:
        certificate = x509.load_pem_x509_certificate(found.group(0).encode())
    except ValueError as exc:
        return {"error": f"unreadable certificate: {exc}"}
    not_after = certificate.not_valid_after_utc
    return {
        "error": "",
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": (not_after - now).days,
    }


def tls_figures(database: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The database's served certificate and the CA the gateways verify it with."""
    now = now or datetime.now(UTC)
    settings = database.get("settings") or {}
    return {
        "served": certificate_figures(database.get("served_certificate"), now),
        "ca": certificate_figures(database.get("ca_certificate"), now),
        "ca_min_days": _int(settings.get("ca_min_days")),
        "certificate_min_days": _int(settings.get("certificate_min_days")),
    }


def database_figures(database: Mapping[str, Any]) -> dict[str, Any]:
    """The figures the criteria judge, from the rows of the report queries.

    Keys match the old figures query (figures.json "figures"); None means not measured.
    """
    settings = database.get("settings") or {}
    db_name = settings.get("db_name")
    roles = [str(role) for role in settings.get("password_roles") or []]
    rows, rows_error = _load_rows(database.get("rows"))
    request_id = safe_request_id(database.get("request_id"))

    def table(name: str) -> list[dict[str, Any]] | None:
        value = rows.get(name)
        return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else None

    def first(name: str, column: str) -> Any:
        found = table(name)
        return found[0].get(column) if found else None

    figures: dict[str, Any] = {
        "reported": bool(database),
        "host": database.get("host") or None,
        "collection_error": database.get("error") or "",
        "rows_error": (database.get("rows_error") or rows_error) if not rows else "",
        "db_name": db_name,
        "app_user": settings.get("app_user"),
        "request_id": request_id,
        "row_wait_attempts": _int(database.get("row_wait_attempts")),
    }

    pg_settings = {row.get("name"): row.get("setting") for row in table("settings") or []}
    figures.update(
        server_version=pg_settings.get("server_version"),
        password_encryption=pg_settings.get("password_encryption"),
        ssl=pg_settings.get("ssl"),
    )

    verifiers = table("verifiers")
    kinds = {row.get("rolname"): row.get("verifier_kind") for row in verifiers or []}
    without_scram = [
        f"{role} ({kinds.get(role) or 'not listed'})"
        for role in roles
        if kinds.get(role) != "SCRAM-SHA-256"
    ]
    figures.update(
        password_roles=len(roles),
        scram_roles=len(roles) - len(without_scram) if verifiers is not None else None,
        roles_without_scram=without_scram if verifiers is not None else None,
    )

    sessions = table("app_sessions")
    if sessions is None:
        figures.update(app_sessions=None, app_sessions_tls=None, app_sessions_tls_versions=None)
        figures["sessions_without_tls"] = None
    else:
        tls = [row for row in sessions if row.get("ssl") is True]
        figures.update(
            app_sessions=len(sessions),
            app_sessions_tls=len(tls),
            app_sessions_tls_versions=",".join(sorted({str(row.get("version")) for row in tls})),
            sessions_without_tls=[
                f"pid {shown(row.get('pid'))} from {row.get('client_addr') or 'the local socket'}"
                for row in sessions
                if row.get("ssl") is not True
            ],
        )

    hba = table("hba_rules")
    if hba is None:
        figures.update(hba_network_rules=None, hba_network_rules_not_tls_scram=None)
        figures["hba_rules_not_tls_scram"] = None
    else:
        network = [
            rule
            for rule in hba
            if rule.get("type") not in (None, "local")
            and {db_name, "all"} & set(rule.get("database") or [])
        ]
        weak = [
            rule
            for rule in network
            if rule.get("type") != "hostssl" or rule.get("auth_method") != "scram-sha-256"
        ]
        figures.update(
            hba_network_rules=len(network),
            hba_network_rules_not_tls_scram=len(weak),
            hba_rules_not_tls_scram=[
                f"line {shown(rule.get('line_number'))} ({rule.get('type')},"
                f" {rule.get('auth_method')})"
                for rule in weak
            ],
        )

    requests = table("requests_newest")
    responses = table("responses_newest")
    call_requests = [
        row for row in requests or [] if request_id and row.get("request_id") == request_id
    ]
    call_responses = [
        row for row in responses or [] if request_id and row.get("request_id") == request_id
    ]
    call = None
    if call_requests:
        request = call_requests[0]
        response = call_responses[0] if call_responses else {}
        call = {
            "id": request.get("id"),
            "request_status": request.get("status_code"),
            "model": request.get("model"),
            "key_alias": request.get("key_alias"),
            "user": request.get("user"),
            "response_id": response.get("id"),
            "response_status": response.get("status_code"),
            "latency_ms": response.get("latency_ms"),
            "prompt_tokens": response.get("prompt_tokens"),
            "completion_tokens": response.get("completion_tokens"),
            "tokens_used": response.get("tokens_used"),
            "cost": response.get("cost"),
        }
    foreign_keys = table("foreign_keys")
    figures.update(
        requests_total=first("requests_total", "requests_total"),
        responses_total=first("responses_total", "responses_total"),
        call_requests=len(call_requests) if requests is not None else None,
        call_responses=len(call_responses) if responses is not None else None,
        call=call,
        requests_without_response=first("orphans", "requests_without_response"),
        responses_without_request=first("orphans", "responses_without_request"),
        fk_definitions=(
            [str(row.get("definition")) for row in foreign_keys]
            if foreign_keys is not None
            else None
        ),
    )
    figures["tls"] = tls_figures(database)
    figures["partitions"] = partition_figures(
        table("partition_sets"), table("partitions"), first("partition_clock", "checked_at")
    )
    return figures


# --- partitions (pg_partman) -------------------------------------------------------------------
LOG_TABLES = ("public.requests", "public.responses")
DAY_S = 86400
WEEK_S = 7 * DAY_S
# The widths postgresql_partman_interval offers, as the criterion names them.
INTERVAL_NAMES = {DAY_S: "daily", WEEK_S: "weekly"}
# A partition is dropped by the first maintenance run after it passed the retention; runs
# are hourly by default, so it may outlive the retention by that long. One day of slack.
RETENTION_SLACK_S = DAY_S
# Maintenance must have made partitions at least a day ahead.
AHEAD_MIN_S = DAY_S


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _whole_period(row: Mapping[str, Any], interval_s: int) -> bool:
    """One interval of the set from midnight UTC; a week from Monday's (pg_partman makes
    them so with date_trunc 'week', as the migration does)."""
    start, end = _timestamp(row.get("range_from")), _timestamp(row.get("range_to"))
    if start is None or end is None or start.tzinfo is None:
        return False
    start = start.astimezone(UTC)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    monday = interval_s != WEEK_S or start.weekday() == 0
    return start == midnight and monday and end - start == timedelta(seconds=interval_s)


def _period(interval_s: int) -> str:
    """What one partition is, in the criterion's words."""
    return {DAY_S: "UTC day from midnight", WEEK_S: "UTC week from Monday midnight"}.get(
        interval_s, f"interval of {interval_s} s from midnight UTC"
    )


def partition_figures(
    sets: list[dict[str, Any]] | None,
    partitions: list[dict[str, Any]] | None,
    checked_at: Any,
) -> dict[str, Any]:
    """Per log table: whether pg_partman keeps it, its interval and retention, its dated
    partitions (oldest, newest, count, size), the rows in its default partition, the dated
    partitions older than the retention allows and those that are not one whole interval.
    None when the queries returned nothing."""
    if sets is None or partitions is None:
        return {"measured": False, "tables": {}}
    now = _timestamp(checked_at)
    config = {row.get("parent_table"): row for row in sets}
    tables = {}
    for name in LOG_TABLES:
        short = name.split(".", 1)[1]
        children = [row for row in partitions if row.get("parent_table") in (name, short)]
        dated = [row for row in children if _timestamp(row.get("range_to"))]
        default = [row for row in children if not _timestamp(row.get("range_to"))]
        kept = config.get(name) or {}
        retention_s = _int(kept.get("retention_seconds"))
        # A table pg_partman does not keep fails on that; its days are judged as days.
        interval_s = _int(kept.get("interval_seconds")) or DAY_S
        oldest_allowed = retention_s + RETENTION_SLACK_S if retention_s else None
        beyond = [
            row["partition"]
            for row in dated
            if now
            and oldest_allowed
            and (now - _timestamp(row["range_to"])).total_seconds() > oldest_allowed
        ]
        # pg_partman computes bounds in its session's time zone: a run outside UTC, or a
        # partition made by hand from a timestamp that is not midnight, leaves partitions
        # that begin and end at another hour, and retention then keeps or drops them hours
        # off.
        not_whole = [row["partition"] for row in dated if not _whole_period(row, interval_s)]
        newest_to = _timestamp(dated[-1]["range_to"]) if dated else None
        tables[short] = {
            "partitioned": bool(children),
            "kept_by_partman": bool(kept),
            "interval_s": interval_s,
            "retention": kept.get("retention"),
            "retention_s": retention_s,
            "premake": _int(kept.get("premake")),
            "partitions": len(dated),
            "oldest": dated[0]["partition"] if dated else None,
            "oldest_from": dated[0].get("range_from") if dated else None,
            "newest": dated[-1]["partition"] if dated else None,
            "newest_to": dated[-1].get("range_to") if dated else None,
            "ahead_s": (newest_to - now).total_seconds() if newest_to and now else None,
            "bytes": sum(_int(row.get("bytes")) or 0 for row in children),
            "default_rows_estimated": sum(_int(row.get("rows_estimated")) or 0 for row in default),
            "beyond_retention": beyond,
            "not_whole_periods": not_whole,
        }
    return {"measured": True, "checked_at": checked_at, "tables": tables}


# --- backups (pgBackRest) --------------------------------------------------------------------
# The backup play hands over, from the host that holds the repository: ``pgbackrest info``
# as text and as JSON, ``pgbackrest repo-ls --output=json`` of the newest archived WAL
# segment, and the host's clock (epoch seconds).
def _json(text: Any) -> Any:
    try:
        return json.loads(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _stanza(info: Any) -> dict[str, Any]:
    """The first stanza of ``pgbackrest info --output=json``, {} when there is none."""
    return info[0] if isinstance(info, list) and info and isinstance(info[0], dict) else {}


def backup_wal(info_json: Any, stanza: Any) -> dict[str, str]:
    """The filter ``evidence_backup_wal``: the repository path (relative to the repository)
    and the file-name filter of the newest archived WAL segment, or '' for both."""
    archives = [a for a in _stanza(_json(info_json)).get("archive") or [] if a.get("max")]
    if not archives:
        return {"path": "", "filter": "", "segment": ""}
    archive = archives[-1]
    segment = str(archive["max"])
    if not re.fullmatch(r"[0-9A-F]{24}", segment) or not re.fullmatch(
        r"[0-9]+-[0-9]+", str(archive.get("id"))
    ):
        return {"path": "", "filter": "", "segment": ""}
    return {
        "path": f"archive/{stanza}/{archive['id']}/{segment[:16]}",
        "filter": f"^{segment}",
        "segment": segment,
    }


def _age(now: int | None, then: int | None) -> int | None:
    return now - then if now is not None and then is not None else None


def _backup_shown(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    return {
        "label": entry.get("label"),
        "type": entry.get("type"),
        "stopped": _int((entry.get("timestamp") or {}).get("stop")),
    }


def backup_figures(backup: Mapping[str, Any], periods: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything measured about the backups: the stanza's state, the newest full backup,
    the newest backup of any type and the newest archived WAL segment, each with its age
    (on the repository host's clock), and the limits the schedule allows."""
    periods = periods or {}
    stanza = _stanza(_json(backup.get("info_json")))
    now = _int(backup.get("now"))
    backups = sorted(
        (b for b in stanza.get("backup") or [] if isinstance(b, dict)),
        key=lambda b: _int((b.get("timestamp") or {}).get("stop")) or 0,
    )
    fulls = [b for b in backups if b.get("type") == "full"]
    newest, newest_full = (
        _backup_shown(backups[-1] if backups else None),
        _backup_shown(fulls[-1] if fulls else None),
    )
    for entry in (newest, newest_full):
        if entry:
            entry["age_s"] = _age(now, entry["stopped"])
    listing = _json(backup.get("wal_ls_json"))
    wal_time = None
    if isinstance(listing, dict):
        times = [_int(v.get("time")) for v in listing.values() if isinstance(v, dict)]
        times = [t for t in times if t is not None]
        wal_time = max(times) if times else None
    grace = _int(periods.get("grace_hours")) or 0
    full_hours, backup_hours = (
        _int(periods.get("full_period_hours")),
        _int(periods.get("backup_period_hours")),
    )
    return {
        "reported": bool(backup),
        "host": backup.get("host"),
        "collection_error": backup.get("error") or "",
        "stanza": stanza.get("name"),
        "status_code": _int((stanza.get("status") or {}).get("code")),
        "status_message": (stanza.get("status") or {}).get("message"),
        "backups": len(backups),
        "newest": newest,
        "newest_full": newest_full,
        "newest_wal": {
            "segment": backup.get("wal_segment") or None,
            "archived": wal_time,
            "age_s": _age(now, wal_time),
        },
        "now": now,
        "limits": {
            "full_max_age_s": (full_hours + grace) * 3600 if full_hours is not None else None,
            "backup_max_age_s": (backup_hours + grace) * 3600 if backup_hours is not None else None,
            "full_period_hours": full_hours,
            "backup_period_hours": backup_hours,
            "grace_hours": grace,
        },
    }


def _hosts(expected: Iterable[Any] | None, reported: Mapping[str, Any]) -> list[str]:
    """The inventory's hosts of a tier, then any other host that reported (in that order)."""
    hosts = [str(host) for host in expected] if expected is not None else sorted(reported)
    return hosts + [str(host) for host in reported if str(host) not in hosts]


def release_source(text: str | None) -> dict[str, str]:
    """The installed release's SOURCE file (`key: value` lines written by
    scripts/build-release.sh): version, commit, app_tree, uncommitted_changes."""
    source = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            source[key.strip()] = value.strip()
    return source


def release_label(source: Mapping[str, str]) -> str:
    """`commit <12 hex>`, marked when app/ had changes outside that commit; unknown for a
    release built before SOURCE existed."""
    commit = source.get("commit")
    if not commit:
        return "unknown commit"
    dirty = " + uncommitted changes" if source.get("uncommitted_changes") == "true" else ""
    return f"commit {commit[:12]}{dirty}"


def gateway_figures(gateway: Mapping[str, Any], host: Any) -> dict[str, Any]:
    """Everything measured on one gateway host."""
    source = release_source(gateway.get("release_source"))
    return {
        "host": gateway.get("host") or host,
        "reported": bool(gateway),
        "app_version": gateway.get("app_version") or "unknown",
        "release": {**source, "label": release_label(source)},
        "service": service_figures(gateway, host),
        "db_connected": db_connected(gateway.get("db_connect_lines") or []),
        "metrics": metrics_figures(gateway.get("metrics"), gateway.get("metrics_status")),
        "db_stats_http_status": _int(gateway.get("db_stats_status")),
        "db_stats": gateway.get("db_stats") or {},
        "health_http_status": _int(gateway.get("health_status")),
        "health": gateway.get("health") or {},
    }


def _collection_problems(
    gateways: list[dict[str, Any]],
    balancers: list[dict[str, Any]],
    entry: Mapping[str, Any],
    database: Mapping[str, Any],
) -> list[str]:
    """Hosts that did not report and steps that stopped: the figures are incomplete."""
    missing = "did not report (host unreachable or play not run)"
    problems = []
    for kind, host, reported, error in [
        ("chat call", entry.get("host"), bool(entry), entry.get("error")),
        *[
            ("gateway", g["host"], g["reported"], g["service"]["collection_error"])
            for g in gateways
        ],
        *[("balancer", b["host"], b["reported"], b["collection_error"]) for b in balancers],
        ("database", database.get("host"), bool(database), database.get("error")),
    ]:
        where = f"{kind} host `{host}`" if host else f"{kind} play"
        if not reported:
            problems.append(f"{where}: {missing}")
        elif error:
            problems.append(f"{where}: {error}")
    return problems


def measure(
    gateways: Mapping[str, Any] | None,
    database: Mapping[str, Any] | None,
    balancers: Mapping[str, Any] | None = None,
    entry: Mapping[str, Any] | None = None,
    gateway_hosts: Iterable[Any] | None = None,
    balancer_hosts: Iterable[Any] | None = None,
    backup: Mapping[str, Any] | None = None,
    backup_periods: Mapping[str, Any] | None = None,
) -> dict:
    """The filter ``evidence_measure``: every figure of the bundle, from the handed-over facts.

    - gateways, balancers: {inventory_hostname: facts} from the gateway and balancer plays
    - database, entry: the facts of the database play and of the chat call's play
    - gateway_hosts, balancer_hosts: the inventory's groups; every one of them is judged,
      also one that did not report (None: the hosts that reported)
    - backup: the facts of the backup play; backup_periods: the schedule's longest gaps
      (full_period_hours, backup_period_hours) and the grace (grace_hours)
    """
    gateways = gateways or {}
    balancers = balancers or {}
    database = database or {}
    entry = entry or {}
    gateway_list = [
        gateway_figures(gateways.get(host) or {}, host) for host in _hosts(gateway_hosts, gateways)
    ]
    expected_gateways = [gateway["host"] for gateway in gateway_list]
    balancer_names = _hosts(balancer_hosts, balancers)
    balancer_list = [
        balancer_figures(balancers.get(host) or {}, host, expected_gateways)
        for host in balancer_names
    ]
    versions = {
        g["host"]: f"{g['app_version']} ({g['release']['label']})"
        for g in gateway_list
        if g["reported"]
    }
    distinct = sorted(set(versions.values()))
    return {
        "gateway_hosts": expected_gateways,
        "gateways": gateway_list,
        # The hosts whose play reported (manifest.json, collected_from).
        "reported": {
            "gateway": [g["host"] for g in gateway_list if g["reported"]],
            "loadbalancer": [b["host"] for b in balancer_list if b["reported"]],
        },
        "app_version": (
            distinct[0]
            if len(distinct) == 1
            else "; ".join(f"{version} on {host}" for host, version in versions.items())
            or "unknown"
        ),
        "balancer": {"hosts": balancer_names, "balancers": balancer_list},
        "collection_problems": _collection_problems(gateway_list, balancer_list, entry, database),
        "entry": entry_figures(entry, balancer_names),
        "chat": chat_figures(entry.get("chat") or {}),
        "database": database_figures(database),
        "database_rows": _load_rows(database.get("rows"))[0],
        "backup": backup_figures(backup or {}, backup_periods),
    }


# --- the secret guard ----------------------------------------------------------------------
WITHHELD = "withheld: the collected content contained a deployment secret\n"


def withhold(files: Mapping[str, Any], secrets: Iterable[Any]) -> dict[str, Any]:
    """The filter ``evidence_withhold``: files holding a secret (as is, or JSON-escaped) are
    replaced by a notice. Empty values are not secrets. Run it under no_log: its input is."""
    values = sorted({str(secret) for secret in secrets or [] if secret not in (None, "")})
    forms = {form for value in values for form in (value, json.dumps(value)[1:-1]) if form}
    leaking = sorted(
        name for name, content in files.items() if any(form in str(content) for form in forms)
    )
    return {
        "files": {
            name: WITHHELD if name in leaking else content for name, content in files.items()
        },
        "withheld": leaking,
        "secrets_searched": len(values),
        "files_searched": len(files),
    }


# --- the criteria ----------------------------------------------------------------------------
def _criterion(name: str, why: list[str], figure: str, source: str) -> dict[str, Any]:
    return {"name": name, "passed": not why, "figure": figure, "why": why, "source": source}


NOT_REPORTED = "the {} play did not report (host unreachable or play not run)"
NO_BALANCER = "no balancer in this inventory (clients reach the gateway directly)"


def _gateway_missing(gateway: Mapping[str, Any]) -> list[str]:
    if not gateway["reported"]:
        return [f"{gateway['host']}: {NOT_REPORTED.format('gateway')}"]
    return []


def _no_gateway(figures: Mapping[str, Any]) -> list[str]:
    return [] if figures["gateways"] else ["no host in the inventory's gateway group"]


def _database_missing(database: Mapping[str, Any]) -> list[str]:
    if not database["reported"]:
        return [NOT_REPORTED.format("database")]
    if database["rows_error"]:
        stopped = database["collection_error"]
        return [
            f"the database figures are missing: {database['rows_error']}"
            + (f" (collection stopped: {stopped})" if stopped else "")
        ]
    return []


def _service_shown(service: Mapping[str, Any]) -> str:
    uptime, memory = service["uptime_s"], service["memory_mib"]
    return (
        f"{shown(service['unit'])} on {shown(service['host'])}:"
        f" {service['active_state'] or 'unknown'} ({service['sub_state'] or 'unknown'}),"
        f" up {shown(uptime)} s, main PID {shown(service['main_pid'])},"
        f" restarts {shown(service['restarts'])},"
        f" memory {f'{shown(memory)} MiB' if memory is not None else 'n/a'}"
    )


def _service_running(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Every gateway's unit active (running); each is named in the figure and the reasons."""
    why = _no_gateway(figures)
    for gateway in figures["gateways"]:
        service, host = gateway["service"], gateway["host"]
        why += _gateway_missing(gateway)
        if not service["reported"]:
            continue
        if not service["properties"]:
            stopped = service["collection_error"]
            why.append(
                f"{host}: systemctl show returned no properties"
                + (f" ({stopped})" if stopped else "")
            )
            continue
        if service["active_state"] != "active":
            why.append(f"{host}: ActiveState is {shown(service['active_state'])}, not active")
        if service["sub_state"] != "running":
            why.append(f"{host}: SubState is {shown(service['sub_state'])}, not running")
    figure = "; ".join(_service_shown(g["service"]) for g in figures["gateways"])
    return _criterion(
        "Service running", why, figure or "no gateway in the inventory", "service_status.txt"
    )


def _balancer(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Every gateway of the inventory a server of the backend, UP, on every balancer.

    An inventory without a balancer passes, saying so: the criterion list keeps its shape in
    every environment, and the summary shows that no balancer was expected (rather than
    leaving a reader to wonder whether the check was forgotten)."""
    name, source = "Balancer: every gateway UP", "balancer_status.txt"
    balancer = figures["balancer"]
    if not balancer["hosts"]:
        return _criterion(name, [], NO_BALANCER, "the inventory's loadbalancer group (empty)")
    why = _no_gateway(figures)
    shown_per_balancer = []
    for lb in balancer["balancers"]:
        host, backend = lb["host"], lb["backend"] or "?"
        if not lb["reported"]:
            why.append(f"{host}: {NOT_REPORTED.format('balancer')}")
            shown_per_balancer.append(f"{host}: not read")
            continue
        if lb["stat_error"]:
            why.append(f"{host}: show stat on {shown(lb['socket'])} failed: {lb['stat_error']}")
            shown_per_balancer.append(f"{host}: not read")
            continue
        if not lb["backend_found"]:
            why.append(f"{host}: no backend {backend} in show stat")
            shown_per_balancer.append(f"{host}: no backend {backend}")
            continue
        why += [f"{host}: {gw} is not a server of backend {backend}" for gw in lb["missing"]]
        why += [f"{host}: {backend}/{_server_shown(server)}, not UP" for server in lb["not_up"]]
        servers = {server["name"]: server for server in lb["servers"]}
        listed = [
            _server_shown(servers[gw]) if gw in servers else f"{gw} not a server"
            for gw in figures["gateway_hosts"]
        ]
        extra = [_server_shown(server) for server in lb["not_in_inventory"]]
        shown_per_balancer.append(
            f"{host}, backend {backend}: {', '.join(listed) or 'no server'}"
            + (f" (also, not a gateway of the inventory: {', '.join(extra)})" if extra else "")
        )
    return _criterion(name, why, "; ".join(shown_per_balancer), source)


def _connected_shown(gateway: Mapping[str, Any]) -> str:
    connected = gateway["db_connected"]
    last = connected["last"]
    return (
        f"{gateway['host']}: {connected['events']} db_connected line(s) since start,"
        f" server {shown(last.get('server_version'))}, TLS {shown(last.get('ssl'))}"
        f" ({shown(last.get('ssl_version'))}), pool_size {shown(last.get('pool_size'))}"
        f" + max_overflow {shown(last.get('max_overflow'))}, user {shown(last.get('db_user'))}"
    )


def _database_connectivity(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Every gateway's workers connected over TLS since its start; the database's SCRAM,
    pg_hba and live sessions."""
    database = figures["database"]
    why = _no_gateway(figures)
    for gateway in figures["gateways"]:
        connected, host = gateway["db_connected"], gateway["host"]
        why += _gateway_missing(gateway)
        if not gateway["reported"]:
            continue
        if connected["events"] == 0:
            why.append(f"{host}: no db_connected line in the journal since the unit's last start")
        if connected["without_tls"]:
            why.append(
                f"{host}: {len(connected['without_tls'])} of {connected['events']} db_connected"
                f" line(s) without TLS: {', '.join(connected['without_tls'])}"
            )
        if connected["unreadable"]:
            why.append(f"{host}: {connected['unreadable']} db_connected line(s) unreadable")
    missing = _database_missing(database)
    why += missing
    if not missing:
        if database["password_encryption"] != "scram-sha-256":
            why.append(
                f"password_encryption is {shown(database['password_encryption'])},"
                " not scram-sha-256"
            )
        if database["roles_without_scram"]:
            why.append(
                "no SCRAM-SHA-256 verifier for " + ", ".join(database["roles_without_scram"])
            )
        if database["roles_without_scram"] is None:
            why.append("the roles' verifiers were not measured")
        if not database["hba_network_rules"]:
            why.append(f"no pg_hba network rule for {shown(database['db_name'])}")
        if database["hba_rules_not_tls_scram"]:
            why.append(
                "pg_hba network rule(s) not hostssl+scram-sha-256: "
                + ", ".join(database["hba_rules_not_tls_scram"])
            )
        if database["sessions_without_tls"]:
            why.append(
                f"live session(s) of {shown(database['app_user'])} without TLS: "
                + ", ".join(database["sessions_without_tls"])
            )
        if database["sessions_without_tls"] is None:
            why.append("the gateway's live sessions were not measured")
    figure = (
        "; ".join(_connected_shown(gateway) for gateway in figures["gateways"])
        + f"; live sessions of {shown(database['app_user'])}: {shown(database['app_sessions_tls'])}"
        f"/{shown(database['app_sessions'])}"
        f" on TLS ({database['app_sessions_tls_versions'] or ''});"
        f" SCRAM-SHA-256 verifiers {shown(database['scram_roles'])}"
        f"/{shown(database['password_roles'])},"
        f" password_encryption {shown(database['password_encryption'])};"
        f" pg_hba network rules for {shown(database['db_name'])}:"
        f" {shown(database['hba_network_rules'])}, not hostssl+scram-sha-256:"
        f" {shown(database['hba_network_rules_not_tls_scram'])}"
    )
    return _criterion(
        "Database connectivity (SCRAM, TLS)",
        why,
        figure,
        "gateway_db_connect.log, db_security.txt",
    )


def _api_call(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The chat call answered 200 with a request id, made where clients call: on a balancer
    when the inventory has one, else on the gateway."""
    chat, entry = figures["chat"], figures["entry"]
    balancers = figures["balancer"]["hosts"]
    error = chat["error"]
    why = []
    if not entry["reported"]:
        why.append(NOT_REPORTED.format("chat call's"))
    else:
        if chat["status"] != 200:
            why.append(
                f"HTTP {shown(chat['status'])}"
                + (f": {chat['error']}" if chat["error"] else "")
                + ", not 200"
            )
        if not chat["request_id"]:
            why.append("no X-Request-ID header in the response")
        if balancers and entry["via"] != "balancer":
            why.append(
                f"made on {shown(entry['host'])}, not through a balancer of the inventory"
                f" ({', '.join(balancers)})"
            )
    figure = (
        f"HTTP {shown(chat['status'])}{f' ({error})' if error else ''},"
        f" X-Request-ID {chat['request_id'] or 'missing'},"
        f" X-Total-Latency {chat['total_latency']}, X-DB-Overhead {chat['db_overhead']},"
        f" tokens {shown(chat['prompt_tokens'])} prompt + {shown(chat['completion_tokens'])}"
        f" completion = {shown(chat['total_tokens'])};"
        f" made on {shown(entry['host'])} ({entry['via'] or 'not made'}):"
        f" {entry['method'] or 'POST'} {entry['url'] or '?'}"
    )
    return _criterion("API call 200", why, figure, "chat_call.json")


def _call_id_missing(figures: Mapping[str, Any]) -> list[str]:
    if figures["database"]["request_id"]:
        return []
    if figures["chat"]["request_id"]:
        return [
            f"the chat call's X-Request-ID {figures['chat']['request_id']!r} is not a plain token"
        ]
    return ["the chat call returned no X-Request-ID to look for"]


def _request_logged(figures: Mapping[str, Any]) -> dict[str, Any]:
    database = figures["database"]
    call = database["call"] or {}
    request_id = figures["chat"]["request_id"] or database["request_id"]
    why = _database_missing(database) or _call_id_missing(figures)
    if not why and database["call_requests"] != 1:
        why.append(f"{shown(database['call_requests'])} rows in requests for {request_id}, not 1")
    figure = (
        f"{shown(database['call_requests'])} row in requests for {request_id or '?'}"
        f" (id {shown(call.get('id'))}, model {shown(call.get('model'))},"
        f" status {shown(call.get('request_status'))}, key alias {shown(call.get('key_alias'))});"
        f" {shown(database['requests_total'])} requests in total"
    )
    return _criterion("Request logged", why, figure, "requests_head.txt")


def _response_logged(figures: Mapping[str, Any]) -> dict[str, Any]:
    database = figures["database"]
    call = database["call"] or {}
    why = _database_missing(database) or _call_id_missing(figures)
    if not why and database["call_responses"] != 1:
        why.append(
            f"{shown(database['call_responses'])} rows in responses for"
            f" {database['request_id']}, not 1"
            f" (after {shown(database['row_wait_attempts'])} look(s))"
        )
    figure = (
        f"{shown(database['call_responses'])} row in responses for it"
        f" (id {shown(call.get('response_id'))}, status {shown(call.get('response_status'))},"
        f" latency {shown(call.get('latency_ms'))} ms, tokens {shown(call.get('tokens_used'))},"
        f" cost {shown(call.get('cost'))}); {shown(database['responses_total'])} responses in"
        f" total; found after {shown(database['row_wait_attempts'])} look(s)"
    )
    return _criterion("Response logged", why, figure, "responses_head.txt")


def _integrity(figures: Mapping[str, Any]) -> dict[str, Any]:
    database = figures["database"]
    call = database["call"] or {}
    foreign_keys = database["fk_definitions"] or []
    why = _database_missing(database)
    if not why:
        for key, text in (
            ("requests_without_response", "requests without a response"),
            ("responses_without_request", "responses without a request"),
        ):
            if database[key] != 0:
                why.append(f"{shown(database[key])} {text}")
        cascading = [fk for fk in foreign_keys if _CASCADE_FK.search(fk)]
        if len(cascading) != 1:
            why.append(
                f"{len(cascading)} foreign keys of responses read"
                " 'REFERENCES requests(id) ON DELETE CASCADE', not 1"
            )
        request_status, response_status = call.get("request_status"), call.get("response_status")
        if request_status is None or response_status is None:
            why.append("the chat call's request and response rows are not both there")
        elif request_status != response_status:
            why.append(
                f"the chat call's response status {response_status} differs from its"
                f" request status {request_status}"
            )
    figure = (
        f"{shown(database['requests_without_response'])} requests without a response,"
        f" {shown(database['responses_without_request'])} responses without a request;"
        f" foreign key: {'; '.join(foreign_keys) or 'none'}"
    )
    return _criterion("Request/response integrity", why, figure, "join_check.txt")


def _hours(seconds: Any) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.1f} h"


def _backup_fresh(figures: Mapping[str, Any]) -> dict[str, Any]:
    backup = figures.get("backup") or backup_figures({}, None)
    limits = backup["limits"]
    full, newest, wal = backup["newest_full"], backup["newest"], backup["newest_wal"]
    why = []
    if not backup["reported"]:
        why.append(NOT_REPORTED.format("backup"))
    elif backup["collection_error"]:
        why.append(f"the backup figures are incomplete: {backup['collection_error']}")
    if backup["reported"]:
        if backup["status_code"] != 0:
            why.append(
                f"stanza {shown(backup['stanza'])} is not ok: {shown(backup['status_message'])}"
            )
        if not full:
            why.append("no full backup in the repository")
        for entry, limit, what in (
            (full, limits["full_max_age_s"], "full backup"),
            (newest, limits["backup_max_age_s"], "backup"),
        ):
            if not entry:
                continue
            if entry["age_s"] is None or limit is None:
                why.append(f"the age of the newest {what} or its limit is unknown")
            elif entry["age_s"] > limit:
                why.append(
                    f"the newest {what} {entry['label']} is {_hours(entry['age_s'])} old,"
                    f" the schedule allows {_hours(limit)}"
                )
    figure = (
        f"stanza {shown(backup['stanza'])}: {shown(backup['status_message'])};"
        f" {backup['backups']} backup(s); newest full"
        f" {(full or {}).get('label') or 'none'} {_hours((full or {}).get('age_s'))} old"
        f" (limit {_hours(limits['full_max_age_s'])}); newest"
        f" {(newest or {}).get('label') or 'none'} {_hours((newest or {}).get('age_s'))} old"
        f" (limit {_hours(limits['backup_max_age_s'])}); newest archived WAL"
        f" {shown(wal['segment'])} {_hours(wal['age_s'])} old"
    )
    return _criterion("Backups younger than their schedule allows", why, figure, "backup_info.txt")


def _no_secret(guard: Mapping[str, Any]) -> dict[str, Any]:
    why = []
    if not guard.get("secrets_searched"):
        why.append("no secret values to search for (evidence_secret_values resolved to nothing)")
    if guard.get("withheld"):
        why.append("withheld because they contained a secret: " + ", ".join(guard["withheld"]))
    figure = (
        f"{guard.get('secrets_searched', 0)} secret values searched in"
        f" {guard.get('files_searched', 0)} files; withheld:"
        f" {', '.join(guard.get('withheld') or []) or 'none'}"
    )
    return _criterion(
        "No secret in the bundle", why, figure, "this playbook (the files themselves)"
    )


def _certificate_shown(what: str, cert: Mapping[str, Any]) -> str:
    if cert["error"]:
        return f"{what}: {cert['error']}"
    return f"{what} {cert['subject']} ends {cert['not_after']} ({cert['days_left']} days left)"


def _certificates(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The CA and the database's certificate far enough from their end (role pki renews the
    certificate 30 days before; the CA is replaced by hand, so it is reported a year ahead)."""
    database = figures["database"]
    why = [] if database["reported"] else [NOT_REPORTED.format("database")]
    tls = database["tls"]
    served, ca = tls["served"], tls["ca"]
    for what, cert, minimum in [
        ("the database's certificate", served, tls["certificate_min_days"]),
        ("the CA", ca, tls["ca_min_days"]),
    ]:
        if cert["error"]:
            why.append(f"{what}: {cert['error']}")
        elif minimum is not None and cert["days_left"] < minimum:
            why.append(f"{what} has {cert['days_left']} days left (fewer than {minimum})")
    if not served["error"] and not ca["error"] and served["issuer"] != ca["subject"]:
        why.append(f"the database's certificate is issued by {served['issuer']}, not the CA")
    figure = f"{_certificate_shown('database certificate', served)}; {_certificate_shown('CA', ca)}"
    return _criterion("Certificates: valid, not near their end", why, figure, "figures.json")


def _size(count: int) -> str:
    return f"{count / 1048576:.1f} MiB"


def _partitions(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Both log tables kept by pg_partman, made at least a day ahead, every partition one
    interval of its set from midnight UTC (a week from Monday), and no partition older than
    the retention (plus the slack of one maintenance interval)."""
    database = figures["database"]
    partitions = database.get("partitions") or {"measured": False, "tables": {}}
    why = [] if database["reported"] else [NOT_REPORTED.format("database")]
    if database["reported"] and not partitions["measured"]:
        why.append("the partition queries returned nothing (is pg_partman installed?)")
    shown_tables = []
    for name, table in partitions["tables"].items():
        if not table["partitioned"]:
            why.append(f"{name} is not partitioned (revision 0003 not applied?)")
            shown_tables.append(f"{name}: not partitioned")
            continue
        if not table["kept_by_partman"]:
            why.append(f"{name} is not registered with pg_partman (run partitions.yml)")
        if table["ahead_s"] is None or table["ahead_s"] < AHEAD_MIN_S:
            why.append(
                f"{name}'s newest partition {shown(table['newest'])} ends"
                f" {shown(table['newest_to'])}, less than a day ahead (is the maintenance"
                " timer running?)"
            )
        if table["not_whole_periods"]:
            why.append(
                f"{name} has {len(table['not_whole_periods'])} partition(s) that are not one"
                f" {_period(table['interval_s'])} (made in another time zone?):"
                f" {', '.join(table['not_whole_periods'])}"
            )
        if table["beyond_retention"]:
            why.append(
                f"{name} keeps {len(table['beyond_retention'])} partition(s) beyond its"
                f" retention of {table['retention']}: {', '.join(table['beyond_retention'])}"
            )
        width = INTERVAL_NAMES.get(table["interval_s"], f"{table['interval_s']} s")
        shown_tables.append(
            f"{name}: {table['partitions']} {width} partitions {shown(table['oldest'])} to"
            f" {shown(table['newest'])}, {_size(table['bytes'])}, retention"
            f" {table['retention'] or 'none (keep everything)'},"
            f" about {table['default_rows_estimated']} rows in the default partition"
        )
    figure = "; ".join(shown_tables) or "no partitions measured"
    return _criterion(
        "Partitions made ahead, none older than the retention", why, figure, "partitions.txt"
    )


def judge(figures: Mapping[str, Any], guard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The filter ``evidence_judge``: the acceptance criteria in their fixed order.

    Each is {name, passed, figure (what was measured), why (reasons it fails), source}.
    """
    return [
        _service_running(figures),
        _balancer(figures),
        _database_connectivity(figures),
        _api_call(figures),
        _request_logged(figures),
        _response_logged(figures),
        _integrity(figures),
        _certificates(figures),
        _backup_fresh(figures),
        _partitions(figures),
        _no_secret(guard),
    ]


def verdict(criteria: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The filter ``evidence_verdict``: PASS only when there are criteria and all pass."""
    criteria = list(criteria)
    failed = [c for c in criteria if not c["passed"]]
    return {
        "result": "PASS" if criteria and not failed else "FAIL",
        "passed": len(criteria) - len(failed),
        "total": len(criteria),
        "failed": [c["name"] for c in failed],
        "lines": [
            f"{'PASS' if c['passed'] else 'FAIL'} | {c['name']} | {c['figure']}" for c in criteria
        ],
        "reasons": [f"{c['name']}: {'; '.join(c['why'])}" for c in failed],
    }


class FilterModule:
    """Ansible's entry point for the role's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "evidence_queries": queries,
            "evidence_systemctl_show": systemctl_show,
            "evidence_journal_since": journal_since,
            "evidence_measure": measure,
            "evidence_backup_wal": backup_wal,
            "evidence_withhold": withhold,
            "evidence_judge": judge,
            "evidence_verdict": verdict,
        }
