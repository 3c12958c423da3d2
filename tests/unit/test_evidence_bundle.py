"""The bundle play through Ansible itself, on the controller only (no hosts, no containers).

Runs the role's real tasks/start.yml and tasks/bundle.yml on localhost with the facts
the remote plays would have handed over (samples.py), so the templates render with this
ansible-core and the bundle is checked as a reviewer reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import samples

REPOSITORY = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
BUNDLE_FILES = {
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
}
PLAYBOOK = """\
- name: The evidence bundle from handed-over facts
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [facts.json]
  tasks:
    - name: Start the bundle
      ansible.builtin.import_role: {name: evidence, tasks_from: start}
    - name: Write the bundle
      ansible.builtin.import_role: {name: evidence, tasks_from: bundle}
"""

pytestmark = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not next to this Python"
)


@dataclass
class Run:
    returncode: int
    output: str
    path: Path

    def text(self, name: str) -> str:
        return (self.path / name).read_text()

    def json(self, name: str) -> Any:
        return json.loads(self.text(name))


def run_bundle(tmp_path: Path, facts: dict[str, Any]) -> Run:
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    run = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "play.yml",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"evidence_output_root={tmp_path / 'out'}",
            "-e",
            "evidence_inventory_name=unit",
            # Not a repository: the manifest records 'unknown' (and git is only read).
            "-e",
            f"evidence_repo_dir={tmp_path}",
        ],
        cwd=tmp_path,
        env={**os.environ, "ANSIBLE_ROLES_PATH": str(REPOSITORY / "roles")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    bundles = sorted((tmp_path / "out" / "unit").glob("*"))
    output = run.stdout[-5000:] + run.stderr[-3000:]
    assert len(bundles) == 1, output
    return Run(run.returncode, output, bundles[0])


def healthy() -> dict[str, Any]:
    return samples.Deployment().bundle_facts(samples.SECRETS)


def test_a_healthy_deployment_gives_a_passing_bundle(tmp_path: Path) -> None:
    run = run_bundle(tmp_path, healthy())
    assert run.returncode == 0, run.output
    assert {p.name for p in run.path.iterdir()} == BUNDLE_FILES
    manifest = run.json("manifest.json")
    assert manifest["result"] == "PASS"
    assert [c["passed"] for c in manifest["criteria"]] == [True] * 11
    assert manifest["request_id"] == samples.REQUEST_ID
    assert manifest["hosts"]["gateway"] == samples.GATEWAYS
    assert manifest["hosts"]["collected_from"] == {
        "gateway": samples.GATEWAYS,
        "loadbalancer": samples.BALANCERS,
        "chat_call": "molecule-lb",
        "database": "molecule-db",
    }
    # The release names what it was built from.
    assert manifest["versions"]["app"] == "0.4.0 (commit 3f2a9c1d5e7b)"
    assert manifest["repository"] == {"commit": "unknown", "dirty": "unknown"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((run.path / name).read_bytes()).hexdigest() == digest
    summary = run.text("SUMMARY.md")
    assert "**Result: PASS**" in summary
    assert "| `llm_gateway_db_overhead_seconds` |" in summary
    assert "| 10 | <= 0.25 ms | > 10 ms |" in summary
    assert "from gateway host(s) `molecule-gateway1`, `molecule-gateway2`," in summary
    assert "balancer host(s) `molecule-lb`" in summary
    assert (
        "the chat call was made on `molecule-lb` (balancer):"
        " `POST http://127.0.0.1:4000/v1/chat/completions`" in summary
    )
    for gateway in samples.GATEWAYS:
        assert f"### Gateway `{gateway}` (`GET /metrics` HTTP 200)" in summary
        assert f"# ===== gateway {gateway} =====" in run.text("service_status.txt")
        assert f"# ===== gateway {gateway} =====" in run.text("gateway_db_connect.log")
    assert "| Balancer: every gateway UP | PASS | molecule-lb, backend gateway:" in summary
    balancer = run.text("balancer_status.txt")
    assert balancer.startswith("# ===== balancer molecule-lb =====")
    assert "gateway,molecule-gateway2,0,0,0,2,,28," in balancer
    assert "UNIX-CONNECT:/run/haproxy/admin.sock" in balancer
    chat = run.json("chat_call.json")
    assert (chat["host"], chat["via"]) == ("molecule-lb", "balancer")
    assert chat["request"]["sent_from"] == "molecule-lb"
    assert chat["request"]["url"] == samples.CHAT_URL
    figures_json = run.json("figures.json")
    assert [g["host"] for g in figures_json["gateways"]] == samples.GATEWAYS
    assert figures_json["gateways"][1]["service"]["main_pid"] == 907
    assert figures_json["balancer"]["balancers"][0]["servers"][0]["status"] == "UP"
    figures = figures_json["figures"]
    assert figures["call"]["tokens_used"] == 21
    assert figures["requests_without_response"] == 0
    assert samples.REQUEST_ID in run.text("join_check.txt")
    assert "--since=@1764499502" in run.text("gateway_db_connect.log")


def test_a_leaked_secret_and_a_lost_gateway_fail_the_run(tmp_path: Path) -> None:
    facts = healthy()
    facts["evidence_database"]["reports"]["db_security"] += f"password {samples.SECRETS[1]}\n"
    del facts["evidence_gateways"]["molecule-gateway2"]
    run = run_bundle(tmp_path, facts)
    assert run.returncode != 0
    assert "FAIL: Service running: molecule-gateway2: the gateway play did not report" in run.output
    assert run.text("db_security.txt").startswith("withheld:")
    assert not any(samples.SECRETS[1] in (run.path / name).read_text() for name in BUNDLE_FILES)
    summary = run.text("SUMMARY.md")
    assert "**Result: FAIL**" in summary
    assert (
        "- gateway host `molecule-gateway2`: did not report (host unreachable or play not run)"
        in summary
    )
    assert "# the gateway play did not report from molecule-gateway2" in run.text(
        "service_status.txt"
    )
    assert (
        "- **No secret in the bundle**: withheld because they contained a secret: db_security.txt"
        in summary
    )
    judged = {c["name"]: c["passed"] for c in run.json("manifest.json")["criteria"]}
    assert judged["Request logged"] is True
    # the call went through the balancer, which still had the other gateway
    assert judged["API call 200"] is True
    assert judged["Balancer: every gateway UP"] is True


def test_a_drained_gateway_fails_the_run(tmp_path: Path) -> None:
    deployment = samples.Deployment()
    deployment.set_status("molecule-gateway1", "DRAIN", "L7OK", "200")
    run = run_bundle(tmp_path, deployment.bundle_facts(samples.SECRETS))
    assert run.returncode != 0
    assert (
        "FAIL: Balancer: every gateway UP: molecule-lb: gateway/molecule-gateway1"
        " DRAIN (check L7OK 200), not UP" in run.output
    )
    judged = {c["name"]: c["passed"] for c in run.json("manifest.json")["criteria"]}
    assert [name for name, passed in judged.items() if not passed] == ["Balancer: every gateway UP"]


def test_an_inventory_without_a_balancer(tmp_path: Path) -> None:
    """Production's shape: one gateway, an empty loadbalancer group."""
    deployment = samples.Deployment().without_balancer()
    deployment.gateway_hosts = ["molecule-gateway1"]
    del deployment.gateways["molecule-gateway2"]
    run = run_bundle(tmp_path, deployment.bundle_facts(samples.SECRETS))
    assert run.returncode == 0, run.output
    assert {p.name for p in run.path.iterdir()} == BUNDLE_FILES
    summary = run.text("SUMMARY.md")
    assert (
        "| Balancer: every gateway UP | PASS | no balancer in this inventory"
        " (clients reach the gateway directly) |" in summary
    )
    assert "from gateway host(s) `molecule-gateway1`,\nno balancer\n" in summary
    assert "made on `molecule-gateway1` (gateway)" in summary
    assert run.text("balancer_status.txt").startswith("# no balancer in this inventory")
    manifest = run.json("manifest.json")
    assert manifest["hosts"]["loadbalancer"] == []
    assert manifest["hosts"]["collected_from"]["loadbalancer"] == []
    assert run.json("chat_call.json")["via"] == "gateway"
