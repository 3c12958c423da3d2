"""The runbook's dry run: `site.yml --check --diff` with changes pending (a new release, a
configuration change, a rotated key) completes on every host, shows what would change,
says what it skipped, and leaves every host as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ansible_playbook

pytestmark = [pytest.mark.host_group("database")]

ROTATED_KEY = "sk-dry-run-rotated-key-that-must-not-be-shown"
WATCHED_FILES = ("/etc/llm-gateway/config.yaml", "/etc/llm-gateway/gateway.env")


def gateway_state(gateway: Any) -> dict[str, str]:
    """What a real run would change: the release link, the config and env files, the
    service's main process."""
    state = {"current": gateway.file("/opt/llm-gateway/current").linked_to}
    for path in WATCHED_FILES:
        state[path] = gateway.file(path).sha256sum
    state["MainPID"] = gateway.run("systemctl show -P MainPID llm-gateway.service").stdout
    return state


def test_a_dry_run_with_pending_changes_completes_and_changes_nothing(
    request: pytest.FixtureRequest,
    group_hosts: Callable[[str], list[Any]],
    changed_release: tuple[Path, str],
) -> None:
    release_dir, version = changed_release
    gateways = group_hosts("gateway")
    before = [gateway_state(gateway) for gateway in gateways]
    run = ansible_playbook(
        request.config.option.ansible_inventory,
        "site.yml",
        f"gateway_release_dir={release_dir}",
        f"gateway_release_version={version}",
        "gateway_log_mode=sync",
        f"vault_gateway_master_key={ROTATED_KEY}",
        options=("--check", "--diff"),
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    recap = output[output.rindex("PLAY RECAP") :]
    assert "failed=0" in recap and "failed=1" not in recap, recap
    # Every gateway was previewed (serial: 1 goes on to the next one) and shows the change.
    assert output.count("Check mode: llm-gateway would restart") == len(gateways), output[-4000:]
    assert "log_mode: sync" in output or "log_mode: async" in output, "no config diff shown"
    assert version in output, "the new release is not named"
    assert ROTATED_KEY not in output, "a rotated secret was shown"
    assert [gateway_state(gateway) for gateway in gateways] == before
