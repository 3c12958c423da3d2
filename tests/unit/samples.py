"""Realistic facts the evidence role's remote plays hand to the controller.

What tasks/chat.yml, gateway.yml, balancer.yml and database.yml hand over (evidence_entry,
evidence_gateways, evidence_balancers, evidence_database) on a healthy deployment shaped
like the molecule scenario (one balancer in front of two gateways, one database), built
from raw material in data/: ``systemctl show`` output, the app's ``db_connected`` journal
lines (llm_gateway.events format), its multiprocess ``/metrics`` text, HAProxy 3.0's
``show stat`` CSV, and psql's JSON rows of the report queries (captured from a PostgreSQL
server holding the app's schema and one chat call).
"""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DATA = Path(__file__).resolve().parent / "data"

# The chat call; psql_rows.json holds its request row and its response row.
REQUEST_ID = "0b9f5b2e-3c1e-4a63-9d7e-51f0c2a4e8d1"
# ActiveEnterTimestamp in the systemctl_show_*.txt samples.
STARTED = 1764499502
# Values the bundle must not contain (like the lab's generated ones).
SECRETS = ["Zq8vN3xLr5TfW2kP9sYb4HcJ7mQd6GaE1uVo0iRt", "owner-pw-4Kd9sLq2", "user-pw-8Hq3mZx7"]


# The inventory's tiers (molecule/default/inventory.yml).
GATEWAYS = ["molecule-gateway1", "molecule-gateway2"]
BALANCERS = ["molecule-lb"]
CHAT_URL = "http://127.0.0.1:4000/v1/chat/completions"


def read(name: str) -> str:
    return (DATA / name).read_text()


def gateway_facts(host: str = GATEWAYS[0], main_pid: int = 812, uptime: int = 120) -> dict:
    """One gateway's evidence_gateway as tasks/gateway.yml keeps it on a healthy host."""
    return {
        "host": host,
        "error": "",
        "unit_name": "llm-gateway.service",
        "unit_status": "● llm-gateway.service - LLM gateway\n     Active: active (running)",
        "unit_status_rc": 0,
        "unit_status_stderr": "",
        "unit_show": read("systemctl_show_active.txt").replace("=812", f"={main_pid}"),
        "clock": STARTED + uptime,
        "db_connect_lines": read("journal_db_connected.txt")
        .replace("molecule-gateway ", f"{host} ")
        .splitlines(),
        "db_connect_stderr": "",
        "journal_since": f"@{STARTED}",
        "app_version": "0.4.0",
        "release_source": RELEASE_SOURCE,
        "db_stats_status": 200,
        "db_stats": {"rows": {"requests": 7, "responses": 7}, "log_mode": "async"},
        "metrics_status": 200,
        "metrics": read("metrics.txt"),
        "health_status": 200,
        "health": {"status": "healthy"},
    }


# scripts/build-release.sh's SOURCE file of the installed release.
RELEASE_SOURCE = (
    "version: 0.4.0\n"
    "commit: 3f2a9c1d5e7b8a6c4d2e0f1a3b5c7d9e1f2a4b6c\n"
    "app_tree: 9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c\n"
    "uncommitted_changes: false\n"
)


def gateways_facts() -> dict[str, Any]:
    """evidence_gateways: every gateway's facts by inventory_hostname."""
    return {
        GATEWAYS[0]: gateway_facts(GATEWAYS[0], 812, 120),
        GATEWAYS[1]: gateway_facts(GATEWAYS[1], 907, 95),
    }


def balancer_facts(host: str = BALANCERS[0]) -> dict[str, Any]:
    """One balancer's evidence_balancer as tasks/balancer.yml keeps it: show stat, as is."""
    return {
        "host": host,
        "error": "",
        "socket": "/run/haproxy/admin.sock",
        "backend": "gateway",
        "stat": read("haproxy_show_stat.txt"),
        "stat_rc": 0,
        "stat_stderr": "",
    }


def balancers_facts() -> dict[str, Any]:
    """evidence_balancers: every balancer's facts by inventory_hostname."""
    return {host: balancer_facts(host) for host in BALANCERS}


def entry_facts(host: str = BALANCERS[0]) -> dict[str, Any]:
    """evidence_entry as tasks/chat.yml hands it over: the chat call, made on the balancer."""
    return {
        "host": host,
        "error": "",
        "chat": {
            "request": {
                "sent_from": host,
                "method": "POST",
                "url": CHAT_URL,
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
    }


def _certificate(subject: str, days: int, issuer: str, key: Any, signer: Any) -> str:
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        # An hour more, so that "days left" is the whole number asked for.
        .not_valid_after(now + datetime.timedelta(days=days, hours=1))
        .sign(signer, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


CA_NAME = "llm-gateway lab PostgreSQL CA"


def certificates(ca_days: int = 3650, server_days: int = 825, issuer: str = CA_NAME) -> dict:
    """The CA file and `openssl s_client -starttls postgres` output with the served one."""
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate(CA_NAME, ca_days, CA_NAME, ca_key, ca_key)
    served = _certificate("molecule-db", server_days, issuer, server_key, ca_key)
    return {
        "ca_certificate": ca,
        "served_certificate": f"CONNECTED(00000003)\n---\nServer certificate\n{served}"
        "subject=CN=molecule-db\n---\n",
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
            "ca_min_days": "365",
            "certificate_min_days": "15",
        },
        **certificates(),
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
            "partitions": "SELECT ...\n public.requests | created_at | 1 day | 4 | ...\n",
        },
        "report_errors": {
            "requests_head": "",
            "responses_head": "",
            "join_check": "",
            "db_security": "",
            "partitions": "",
        },
    }


def with_rows(database: dict[str, Any], change) -> dict[str, Any]:
    """The database facts with psql's JSON rows changed by change(rows)."""
    rows = json.loads(database["rows"])
    change(rows)
    return {**database, "rows": json.dumps(rows)}


# pgbackrest info --output=json (one full backup, stopped at BACKUP_STOPPED) and repo-ls of
# the newest archived WAL segment, captured on the lab's repository host.
BACKUP_STOPPED = 1796053508
BACKUP_PERIODS = {"full_period_hours": 168, "backup_period_hours": 24, "grace_hours": 2}


def backup_facts(age_s: int = 600, host: str = "molecule-backup") -> dict:
    """What tasks/backup.yml hands over when the newest (full) backup is age_s old."""
    return {
        "host": host,
        "error": "",
        "now": str(BACKUP_STOPPED + age_s),
        "info_text": read("pgbackrest_info.txt"),
        "info_json": read("pgbackrest_info.json"),
        "wal_segment": "000000010000000000000003",
        "wal_ls_json": read("pgbackrest_repo_ls.json"),
    }


@dataclass
class Deployment:
    """Everything the bundle play judges: the handed-over facts and the inventory's tiers.

    ``gateway`` is the first gateway's facts (the same dict as in ``gateways``)."""

    gateways: dict[str, Any] = field(default_factory=gateways_facts)
    database: dict[str, Any] = field(default_factory=database_facts)
    balancers: dict[str, Any] = field(default_factory=balancers_facts)
    entry: dict[str, Any] = field(default_factory=entry_facts)
    gateway_hosts: list[str] = field(default_factory=lambda: list(GATEWAYS))
    balancer_hosts: list[str] = field(default_factory=lambda: list(BALANCERS))
    backup: dict[str, Any] = field(default_factory=backup_facts)
    backup_periods: dict[str, Any] = field(default_factory=lambda: dict(BACKUP_PERIODS))

    @property
    def gateway(self) -> dict[str, Any]:
        return self.gateways[GATEWAYS[0]]

    def measure_args(self) -> tuple[Any, ...]:
        """evidence_measure's arguments, in order (copies: a test may change the facts)."""
        return copy.deepcopy(
            (
                self.gateways,
                self.database,
                self.balancers,
                self.entry,
                self.gateway_hosts,
                self.balancer_hosts,
                self.backup,
                self.backup_periods,
            )
        )

    def without_balancer(self) -> Deployment:
        """Production's shape: no balancer, the chat call made on the (first) gateway."""
        self.balancers, self.balancer_hosts = {}, []
        self.entry = entry_facts(GATEWAYS[0])
        return self

    def set_status(self, server: str, status: str, check: str = "", code: str = "") -> None:
        """One server's status (and last check) in every balancer's show stat."""
        for balancer in self.balancers.values():
            lines = balancer["stat"].splitlines()
            header = lines[0][2:].split(",")
            for i, line in enumerate(lines):
                fields = line.split(",")
                if len(fields) == len(header) and fields[:2] == ["gateway", server]:
                    fields[header.index("status")] = status
                    fields[header.index("check_status")] = check
                    fields[header.index("check_code")] = code
                    lines[i] = ",".join(fields)
            balancer["stat"] = "\n".join(lines) + "\n"

    def bundle_facts(self, secrets: list[str]) -> dict[str, Any]:
        """The facts the bundle play finds on localhost, as the remote plays leave them."""
        return {
            "evidence_gateways": self.gateways,
            "evidence_balancers": self.balancers,
            "evidence_entry": self.entry,
            "evidence_database": self.database,
            "evidence_secrets": secrets,
            "evidence_gateway_hosts": self.gateway_hosts,
            "evidence_balancer_hosts": self.balancer_hosts,
            "evidence_backup": self.backup,
            "evidence_backup_full_period_hours": self.backup_periods["full_period_hours"],
            "evidence_backup_period_hours": self.backup_periods["backup_period_hours"],
            "evidence_backup_grace_hours": self.backup_periods["grace_hours"],
        }
