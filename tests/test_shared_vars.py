"""The shared group_vars/ reach every entry-point playbook, in every environment.

Ansible reads playbook-adjacent group_vars/ from the directory of the playbook named on
the command line, so a top-level group_vars/ is silently ignored by a playbook under
playbooks/ run directly (playbooks/group_vars links to it for that reason). For each
entry point, a throwaway probe playbook is placed in the entry point's directory and run
against each inventory: it asserts, for every inventory host, that the marker and every
key of group_vars/all/ are defined and that the environment's own group_vars loaded too.

No host is contacted: the probe only runs `assert`, which Ansible evaluates on the
controller, and ansible_connection=local is forced as an extra var besides.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_VARS_DIR = REPOSITORY / "group_vars" / "all"
INVENTORIES = ["lab", "staging", "production"]
ENTRY_POINTS = [
    path
    for path in [
        "site.yml",
        "playbooks/database.yml",
        "playbooks/gateway.yml",
        "playbooks/evidence.yml",
    ]
    if (REPOSITORY / path).exists()
]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def shared_var_names() -> list[str]:
    names: set[str] = set()
    for path in sorted(SHARED_VARS_DIR.glob("*.yml")):
        names |= set(yaml.safe_load(path.read_text()) or {})
    return sorted(names)


def run_probe(directory: Path, inventory: str) -> subprocess.CompletedProcess[str]:
    """Runs an assert-only playbook from `directory` against inventory/<inventory>."""
    # `in hostvars[...]` checks that a variable exists without templating it, so the
    # staging/production vault_* references need no vault here.
    checks = [f"'{name}' in hostvars[inventory_hostname]" for name in shared_var_names()]
    probe_play = [
        {
            "name": "Probe the variables this directory's playbooks see",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Shared and environment group_vars are loaded",
                    "ansible.builtin.assert": {
                        "that": [
                            *checks,
                            "deploy_shared_vars_loaded | bool",
                            f"deploy_environment == '{inventory}'",
                        ]
                    },
                }
            ],
        }
    ]
    probe = directory / f".shared-vars-probe-{uuid.uuid4().hex}.yml"
    probe.write_text(yaml.safe_dump(probe_play, sort_keys=False))
    try:
        return subprocess.run(
            [
                str(ANSIBLE_PLAYBOOK),
                "-i",
                f"inventory/{inventory}",
                "-e",
                "ansible_connection=local",
                str(probe),
            ],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        probe.unlink()


def test_shared_vars_exist() -> None:
    assert "deploy_shared_vars_loaded" in shared_var_names()


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_shared_vars_reach_entry_point(entry_point: str, inventory: str) -> None:
    result = run_probe((REPOSITORY / entry_point).parent, inventory)
    assert result.returncode == 0, result.stdout + result.stderr


def test_probe_fails_where_shared_vars_are_missing(tmp_path: Path) -> None:
    """Control: from a directory without group_vars/, the same probe must fail."""
    result = run_probe(tmp_path, "lab")
    assert result.returncode != 0
    assert "deploy_shared_vars_loaded" in result.stdout
