"""The evidence step against the molecule deployment (issue 4).

Runs evidence.yml once, as `make evidence` does but into a temporary directory,
then reads the bundle as a reviewer would: every file there and non-empty, the manifest's
hashes, every criterion PASS, every gateway and the balancer covered, the chat call made
through the balancer, its request id in the table heads and the join, its rows in the
live database, and none of the deployment's generated secrets anywhere.

Not parametrized over hosts: the playbook reaches every host itself through molecule's
inventory (MOLECULE_INVENTORY_FILE and the links next to it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED, psql
from testinfra.utils.ansible_runner import AnsibleRunner

REPOSITORY = Path(__file__).resolve().parents[3]
PLAYBOOK = "evidence.yml"
INVENTORY_NAME = "molecule"
BUNDLE_FILES = [
    "service_status.txt",
    "gateway_db_connect.log",
    "balancer_status.txt",
    "chat_call.json",
    "requests_head.txt",
    "responses_head.txt",
    "join_check.txt",
    "db_security.txt",
    "backup_info.txt",
    "partitions.txt",
    "figures.json",
    "SUMMARY.md",
    "manifest.json",
]
CRITERIA = [
    "Service running",
    "Balancer: every gateway UP",
    "Database connectivity (SCRAM, TLS)",
    "API call 200",
    "Request logged",
    "Response logged",
    "Request/response integrity",
    "Certificates: valid, not near their end",
    "Backups younger than their schedule allows",
    "Partitions made ahead, none older than the retention",
    "No secret in the bundle",
]


@dataclass
class Bundle:
    path: Path
    returncode: int
    output: str

    def text(self, name: str) -> str:
        return (self.path / name).read_text()

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))


def _ansible_playbook() -> str:
    """The ansible-playbook next to the Python running the tests (the repository's .venv)."""
    sibling = Path(sys.executable).parent / "ansible-playbook"
    return (
        str(sibling) if sibling.exists() else shutil.which("ansible-playbook") or "ansible-playbook"
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    if "MOLECULE_INVENTORY_FILE" not in os.environ:
        pytest.skip("needs the molecule deployment (run through `make molecule`)")
    # The directory, not the file: molecule links hosts and group_vars next to it.
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    output_root = tmp_path_factory.mktemp("evidence")
    run = subprocess.run(
        [
            _ansible_playbook(),
            "-i",
            str(inventory),
            PLAYBOOK,
            "-e",
            f"evidence_output_root={output_root}",
            "-e",
            f"evidence_inventory_name={INVENTORY_NAME}",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = run.stdout[-6000:] + run.stderr[-3000:]
    bundles = (
        sorted((output_root / INVENTORY_NAME).glob("*"))
        if (output_root / INVENTORY_NAME).is_dir()
        else []
    )
    assert len(bundles) == 1, f"expected one bundle under {output_root}:\n{output}"
    return Bundle(bundles[0], run.returncode, output)


@pytest.fixture(scope="module")
def tier(request: pytest.FixtureRequest) -> Any:
    """The inventory hosts of a group (sorted, as testinfra lists them)."""
    runner = AnsibleRunner(request.config.option.ansible_inventory)
    return runner.get_hosts


def test_playbook_succeeds(bundle: Bundle) -> None:
    assert bundle.returncode == 0, bundle.output


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_file_present_and_not_empty(bundle: Bundle, name: str) -> None:
    path = bundle.path / name
    assert path.is_file(), f"{name} missing from {bundle.path}"
    assert path.stat().st_size > 0, f"{name} is empty"


def test_bundle_has_no_other_files(bundle: Bundle) -> None:
    assert sorted(p.name for p in bundle.path.iterdir()) == sorted(BUNDLE_FILES)


def test_manifest_hashes_match(bundle: Bundle) -> None:
    recorded = bundle.json("manifest.json")["sha256"]
    assert sorted(recorded) == sorted(set(BUNDLE_FILES) - {"manifest.json"})
    actual = {
        name: hashlib.sha256((bundle.path / name).read_bytes()).hexdigest() for name in recorded
    }
    assert actual == recorded


def test_manifest_records_the_run(bundle: Bundle) -> None:
    manifest = bundle.json("manifest.json")
    assert manifest["inventory"] == INVENTORY_NAME
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["repository"]["commit"])
    assert isinstance(manifest["repository"]["dirty"], bool)
    assert manifest["versions"]["postgresql"].startswith("17")
    assert manifest["versions"]["app"] not in ("", "unknown")
    assert manifest["started_at"] <= manifest["finished_at"]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_criterion_passes(bundle: Bundle, criterion: str) -> None:
    judged = {c["name"]: c for c in bundle.json("manifest.json")["criteria"]}
    assert judged[criterion]["passed"] is True, (
        judged[criterion]["why"],
        judged[criterion]["figure"],
    )
    row = next(
        line
        for line in bundle.text("SUMMARY.md").splitlines()
        if line.startswith(f"| {criterion} |")
    )
    assert row.split("|")[2].strip() == "PASS", row


def test_summary_says_pass(bundle: Bundle) -> None:
    assert "**Result: PASS**" in bundle.text("SUMMARY.md")
    assert bundle.json("manifest.json")["result"] == "PASS"
    assert [c["name"] for c in bundle.json("manifest.json")["criteria"]] == CRITERIA


def test_every_gateway_and_balancer_is_covered(bundle: Bundle, tier: Any) -> None:
    gateways, balancers = tier("gateway"), tier("loadbalancer")
    assert len(gateways) == 2 and len(balancers) == 1, (gateways, balancers)
    manifest = bundle.json("manifest.json")
    assert sorted(manifest["hosts"]["collected_from"]["gateway"]) == sorted(gateways)
    assert manifest["hosts"]["collected_from"]["loadbalancer"] == balancers
    judged = {c["name"]: c for c in manifest["criteria"]}
    for gateway in gateways:
        assert f"on {gateway}: active (running)" in judged["Service running"]["figure"]
        assert f"{gateway}: " in judged["Database connectivity (SCRAM, TLS)"]["figure"]
        assert f"{gateway} UP" in judged["Balancer: every gateway UP"]["figure"]
        for name in ("service_status.txt", "gateway_db_connect.log"):
            assert f"# ===== gateway {gateway} =====" in bundle.text(name)


def test_balancer_status_shows_every_gateway_up(bundle: Bundle, tier: Any) -> None:
    """The raw show stat lines: every gateway a server of backend gateway, status UP."""
    text = bundle.text("balancer_status.txt")
    [balancer] = tier("loadbalancer")
    assert f"# ===== balancer {balancer} =====" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# pxname,"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    rows = csv.DictReader([lines[start][2:], *lines[start + 1 : end]])
    servers = {
        row["svname"]: row["status"]
        for row in rows
        if row["pxname"] == "gateway" and row["svname"] not in ("FRONTEND", "BACKEND")
    }
    assert servers == dict.fromkeys(tier("gateway"), "UP")


def test_chat_call_went_through_the_balancer(bundle: Bundle, tier: Any) -> None:
    chat = bundle.json("chat_call.json")
    assert chat["request"]["sent_from"] == chat["host"] == tier("loadbalancer")[0]
    assert chat["via"] == "balancer"
    port = SHARED["gateway_port"]
    assert chat["request"]["url"] == f"https://127.0.0.1:{port}/v1/chat/completions"


def test_chat_call_recorded_without_key(bundle: Bundle) -> None:
    chat = bundle.json("chat_call.json")
    assert chat["status"] == 200
    assert chat["request"]["headers"]["Authorization"] == "Bearer <redacted>"
    for header in ("X-Request-ID", "X-DB-Overhead", "X-Total-Latency"):
        assert chat["headers"][header], f"{header} missing"


@pytest.mark.parametrize("name", ["requests_head.txt", "responses_head.txt", "join_check.txt"])
def test_request_id_in_reports(bundle: Bundle, name: str) -> None:
    request_id = bundle.json("chat_call.json")["headers"]["X-Request-ID"]
    assert request_id in bundle.text(name)


def test_join_check_shows_cascade_and_no_orphans(bundle: Bundle) -> None:
    join = bundle.text("join_check.txt")
    # Revision 0003: the key of a partitioned requests includes its partition column.
    assert "REFERENCES requests(id, created_at) ON DELETE CASCADE" in join
    figures = bundle.json("figures.json")["figures"]
    assert figures["requests_without_response"] == 0
    assert figures["responses_without_request"] == 0


def test_figures_match_the_live_database(bundle: Bundle, group_host: Any) -> None:
    """The summary's call figures against a fresh query on the database host."""
    request_id = bundle.json("chat_call.json")["headers"]["X-Request-ID"]
    assert re.fullmatch(r"[A-Za-z0-9_.:-]+", request_id)
    figures = bundle.json("figures.json")["figures"]
    query = (
        "SELECT s.tokens_used, s.status_code FROM requests q "
        f"JOIN responses s ON s.request_id_fk = q.id WHERE q.request_id = '{request_id}'"
    )
    tokens, status = psql(group_host("database"), query, figures["db_name"]).split("|")
    call = figures["call"]
    assert int(tokens) == call["tokens_used"]
    assert int(status) == call["response_status"] == 200


def test_no_generated_secret_in_bundle(bundle: Bundle, credentials_dir: Path) -> None:
    secrets = {
        path.name: path.read_text().strip()
        for path in sorted(credentials_dir.iterdir())
        if path.is_file()
    }
    assert secrets, f"no generated secrets found in {credentials_dir}"
    leaks = [
        f"{secret_name} in {path.name}"
        for path in sorted(bundle.path.iterdir())
        for secret_name, value in secrets.items()
        if value and value in path.read_text()
    ]
    assert not leaks, leaks
