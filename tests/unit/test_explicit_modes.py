"""What the roles create does not depend on the host's umask (issue 11, item 5).

On a host whose umask is 027 (a hardened login.defs, or sudo's own umask setting), a file
or directory without an explicit mode, or a venv pip creates under that umask, is unreadable
to the service user. Every task of the postgresql and gateway roles that writes a file or
directory therefore names its mode, and pip runs with umask 0022.
"""

from __future__ import annotations

import pytest
import yaml
from playbooks import REPOSITORY

ROLES = ("postgresql", "gateway")
WRITERS = {"copy", "template", "unarchive", "file", "get_url"}


def tasks(node):
    for task in node if isinstance(node, list) else []:
        if not isinstance(task, dict):
            continue
        yield task
        for key in ("block", "rescue", "always"):
            yield from tasks(task.get(key))


def module(task: dict) -> tuple[str, dict]:
    for key, value in task.items():
        if key.startswith("ansible.builtin."):
            return key.removeprefix("ansible.builtin."), value if isinstance(value, dict) else {}
    return "", {}


def role_tasks():
    for role in ROLES:
        for path in sorted((REPOSITORY / "roles" / role / "tasks").glob("*.yml")):
            for task in tasks(yaml.safe_load(path.read_text())):
                yield pytest.param(task, id=f"{role}/{path.name}: {task.get('name')}")


@pytest.mark.parametrize("task", list(role_tasks()))
def test_files_and_directories_have_an_explicit_mode(task: dict) -> None:
    name, args = module(task)
    if name not in WRITERS or args.get("state") in ("absent", "link"):
        return
    assert "mode" in args, f"{task.get('name')}: {name} without mode (the host's umask decides)"


def test_the_venv_is_created_and_filled_under_umask_0022() -> None:
    install = yaml.safe_load((REPOSITORY / "roles/gateway/tasks/install.yml").read_text())
    pips = [module(t)[1] for t in tasks(install) if module(t)[0] == "pip"]
    assert pips
    assert all(str(pip.get("umask")) == "0022" for pip in pips), pips


def test_this_test_sees_the_tasks() -> None:
    assert sum(1 for _ in role_tasks()) > 40
