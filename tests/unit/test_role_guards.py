"""The roles refuse an operator's likely mistakes at their door, naming the variable.

Each test runs a role's real validation tasks (tasks_from: validate) with ansible-playbook
against local-connection hosts of a throwaway inventory shaped like staging (a database,
two gateways), with one value wrong, and reads what the operator would see.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from playbooks import ansible_playbook, write_inventory

LITERAL_KEY = "sk-literal-provider-key-0123456789"
HBA_ROW = "hostssl  litellm_db       litellm_user     {}/32       scram-sha-256\n"


def local(address: str) -> dict[str, str]:
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "service_address": address,
    }


@pytest.fixture
def deployment(tmp_path: Path):
    """Inventory, playbook and a pg_hba.conf that admits both gateways."""
    hba = tmp_path / "pg_hba.conf"
    hba.write_text(HBA_ROW.format("10.0.0.18") + HBA_ROW.format("10.0.0.20"))
    inventory = write_inventory(
        tmp_path / "inventory",
        {
            "database": {"hosts": {"guard-db": local("10.0.0.19")}},
            "gateway": {
                "hosts": {"guard-gw1": local("10.0.0.18"), "guard-gw2": local("10.0.0.20")}
            },
        },
        gateway_db_hba_file=str(hba),
    )
    playbook = tmp_path / "validate.yml"
    playbook.write_text(
        """
- name: Gateway validation
  hosts: gateway
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.include_role: {name: gateway, tasks_from: validate}
- name: Database validation (up to the facts-dependent checks)
  hosts: database
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.include_role: {name: postgresql, tasks_from: validate}
      vars: {ansible_facts: {distribution: Debian, distribution_release: trixie}}
"""
    )

    def run(*args: str):
        result = ansible_playbook(inventory, playbook, *args)
        return result, result.stdout + result.stderr

    run.hba = hba
    return run


def test_a_correct_deployment_passes(deployment) -> None:
    result, output = deployment()
    assert result.returncode == 0, output
    assert "Connection budget 30 of 100 (postgresql_max_connections)" in output


def test_a_literal_api_key_is_refused_without_showing_it(deployment) -> None:
    models = [
        {"model_name": "ok", "litellm_params": {"model": "openai/a", "api_key": "os.environ/A"}},
        {"model_name": "leaky", "litellm_params": {"model": "openai/b", "api_key": LITERAL_KEY}},
    ]
    result, output = deployment("-e", json.dumps({"gateway_model_list": models}))
    assert result.returncode != 0
    assert "gateway_model_list: the api_key of entry 1 (model_name leaky)" in output
    assert "os.environ/NAME" in output
    assert "vault_gateway_provider_keys.NAME" in output
    assert LITERAL_KEY not in output


def test_pools_beyond_max_connections_are_refused(deployment) -> None:
    # 2 gateways x 4 workers x (5 + 5) + 10 = 90 > 60.
    result, output = deployment("-e", "gateway_workers=4", "-e", "postgresql_max_connections=60")
    assert result.returncode != 0
    assert "may open 90 database connections" in output
    assert "more than postgresql_max_connections (60)" in output
    assert "Raise postgresql_max_connections" in output


def test_headroom_counts(deployment) -> None:
    # 2 gateways x 1 worker (no facts) x 10 + 85 = 105 > 100.
    result, output = deployment("-e", "postgresql_connection_headroom=85")
    assert result.returncode != 0
    assert "+ 85 postgresql_connection_headroom" in output


def test_a_gateway_the_database_does_not_admit_is_refused(deployment) -> None:
    # guard-gw2 joined the gateway group; the database was last deployed without it.
    deployment.hba.write_text(HBA_ROW.format("10.0.0.18"))
    result, output = deployment("--limit", "guard-gw2")
    assert result.returncode != 0
    assert "does not admit guard-gw2 (10.0.0.20) as litellm_user" in output
    assert "--limit guard-db,guard-gw2" in output
    # The gateway already admitted passes.
    result, output = deployment("--limit", "guard-gw1")
    assert result.returncode == 0, output


def test_a_dry_run_only_warns_about_the_missing_admission(deployment) -> None:
    deployment.hba.write_text(HBA_ROW.format("10.0.0.18"))
    result, output = deployment("--limit", "guard-gw2", "--check")
    assert result.returncode == 0, output
    assert "Not yet:" in output


def test_a_database_not_deployed_yet_is_named(deployment) -> None:
    deployment.hba.unlink()
    result, output = deployment("--limit", "guard-gw1")
    assert result.returncode != 0
    assert "cannot be read" in output
    assert "--limit guard-db,guard-gw1" in output


def test_max_connections_is_not_a_free_setting(deployment) -> None:
    result, output = deployment("-e", json.dumps({"postgresql_settings": {"max_connections": 300}}))
    assert result.returncode != 0
    assert "postgresql_settings must not set max_connections" in output
    assert "postgresql_max_connections" in output


def test_a_negative_retention_is_refused(deployment) -> None:
    result, output = deployment("-e", "postgresql_partman_retention_days=-1")
    assert result.returncode != 0
    assert "postgresql_partman_retention_days 0 (keep everything) or more (got -1)" in output


def test_the_partitions_play_refuses_a_negative_retention_before_the_database(
    tmp_path: Path,
) -> None:
    """partitions.yml alone (changing the retention) checks it too, before any query."""
    inventory = write_inventory(
        tmp_path / "inventory", {"database": {"hosts": {"guard-db": local("10.0.0.19")}}}
    )
    result = ansible_playbook(
        inventory,
        Path(__file__).resolve().parents[2] / "partitions.yml",
        "-e",
        "postgresql_partman_retention_days=-3",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "(got -3)" in output
    assert "Find which log tables are partitioned" not in output
