"""Every host is reached as production's are: SSH as `deploy` with a key, sudo without a
password, and an sshd that refuses root and passwords. Tried from the controller, as an
outsider would, through the same SSH client configuration Ansible uses."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from conftest import SSH_CONFIG


def ssh(name: str, *options: str, command: str = "true") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(SSH_CONFIG), "-o", "BatchMode=yes", *options, name, command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def name(hostvars: dict[str, Any]) -> str:
    return hostvars["inventory_hostname"]


def test_deploy_logs_in_with_its_key_and_sudoes_without_a_password(name: str) -> None:
    result = ssh(name, command="sudo --non-interactive id --user --name")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "root"


def test_root_cannot_log_in_even_with_the_deploy_key(name: str) -> None:
    result = ssh(name, "-o", "User=root")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr


def test_the_server_offers_no_password_login(name: str) -> None:
    result = ssh(
        name,
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
    )
    assert result.returncode == 255
    # The methods the server would still accept: the key, nothing else.
    assert "Permission denied (publickey)" in result.stderr


def test_an_unpinned_host_key_is_refused(name: str) -> None:
    result = ssh(name, "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes")
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
