"""Run the repository's roles with ansible-playbook against throwaway inventories.

The inventories live in a temporary directory whose group_vars/all/ links the repository's
group_vars/all/main.yml, so the shared values are exactly the ones a deployment uses; the
environment's own values (the vault variables, the model list) are written beside it.
Nothing here connects anywhere: hosts use the local connection, or an address nothing
answers on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# The values inventory/<env>/group_vars/all/ would hold (fakes; never deployed).
ENVIRONMENT: dict[str, Any] = {
    "deploy_environment": "test",
    "vault_postgresql_app_owner_password": "owner-pw-test",
    "vault_postgresql_app_user_password": "user-pw-test",
    "vault_gateway_master_key": "sk-master-test",
    "vault_gateway_provider_keys": {"OPENAI_API_KEY": "sk-provider-test"},
    "gateway_model_list": [
        {
            "model_name": "gpt-4o-mini",
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_key": "os.environ/OPENAI_API_KEY",
            },
        }
    ],
}


def write_inventory(directory: Path, hosts: dict[str, Any], **env: Any) -> Path:
    """hosts.yml with ``hosts`` (the all group's children) and the group_vars of an environment."""
    group_vars = directory / "group_vars" / "all"
    group_vars.mkdir(parents=True)
    (group_vars / "main.yml").symlink_to(REPOSITORY / "group_vars" / "all" / "main.yml")
    environment = {"deploy_secrets_dir": str(directory / "secrets"), **ENVIRONMENT, **env}
    (group_vars / "environment.yml").write_text(yaml.safe_dump(environment))
    (directory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    return directory / "hosts.yml"


def ansible_playbook(
    inventory: Path, playbook: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook from this venv with the repository's roles; output captured."""
    environment = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPOSITORY / "roles"),
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        **(env or {}),
    }
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args],
        cwd=inventory.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
