"""A throwaway PostgreSQL cluster from the server binaries on this machine.

Used by the tests (conftest.py) and by the benchmark (bench/run_bench.py), so both start
PostgreSQL the same way. initdb and postgres refuse to run as root, so when we are root
the server runs as the ``postgres`` system user via runuser.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import trustme
from ports import free_port


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/*/bin, else wherever pg_ctl is on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")


@dataclass
class PostgresCluster:
    bindir: Path
    base: Path
    port: int
    as_postgres: list[str] = field(default_factory=list)
    # Extra server settings (-c name=value), e.g. fsync=off for the tests; TLS is added by
    # make_tls().
    settings: dict[str, str] = field(default_factory=dict)
    ca_cert: Path | None = None

    @classmethod
    def create(cls, base: Path, settings: dict[str, str] | None = None) -> PostgresCluster:
        """A cluster in ``base`` (which must exist) on a free loopback port, not yet initdb'd."""
        as_postgres = []
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        return cls(postgres_bindir(), base, free_port(), as_postgres, dict(settings or {}))

    @property
    def data(self) -> Path:
        return self.base / "data"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, cwd=self.base)

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def make_tls(self) -> None:
        """A throwaway CA and a server certificate for 127.0.0.1, so tests can connect with
        sslmode=verify-full like production does."""
        tls = self.base / "tls"
        tls.mkdir()
        ca = trustme.CA(organization_name="llm-gateway test CA")
        server = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(tls / "ca.crt")
        server.cert_chain_pems[0].write_to_path(tls / "server.crt")
        server.private_key_pem.write_to_path(tls / "server.key")
        for name in ("server.key", "server.crt"):
            if self.as_postgres:
                shutil.chown(tls / name, "postgres", "postgres")
            os.chmod(tls / name, 0o600)
        self.ca_cert = tls / "ca.crt"
        self.settings.update(
            ssl="on", ssl_cert_file=str(tls / "server.crt"), ssl_key_file=str(tls / "server.key")
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.base / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            [*self.as_postgres, str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
            cwd=self.base,
        )
        return status.returncode == 0

    def url(self, database: str = "postgres", user: str = "postgres", tls: bool = False) -> str:
        url = f"postgresql+psycopg2://{user}@127.0.0.1:{self.port}/{database}"
        if tls:
            url += f"?sslmode=verify-full&sslrootcert={self.ca_cert}"
        return url

    def connect(self, database: str = "postgres"):
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        conn.autocommit = True
        return conn

    def execute(self, sql: str, database: str = "postgres") -> None:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()
