"""The roles work with any tag subset (issue 11, item 5).

``--tags postgresql_configure`` once rendered pg_hba.conf without the client addresses,
which only the postgresql_validate tasks compute. Now each role's validation is tagged
``always``, and a dry run's end on a host without PostgreSQL carries every later step's
tag. ``ansible-playbook --list-tasks`` shows what a tag selects without contacting a host.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playbooks import REPOSITORY

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
# "role : name"; an include_role task is listed by its name alone (role "").
TASK = re.compile(r"^ {6}(?:(\S+) : )?(.*?)\tTAGS: \[(.*)\]$")


def role_tags(role: str) -> list[str]:
    main = (REPOSITORY / "roles" / role / "tasks" / "main.yml").read_text()
    return sorted(set(re.findall(rf"\b({role}_[a-z]+)\b", main)) - {f"{role}_validate"})


@functools.cache
def listed(playbook: str, tag: str) -> list[tuple[str, str, frozenset[str]]]:
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "inventory/production", playbook, "--list-tasks",
         "--tags", tag],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    tasks = []
    for line in result.stdout.splitlines():
        match = TASK.match(line)
        if match:
            role, name, tags = match[1] or "", match[2], match[3]
            tasks.append((role, name, frozenset(t.strip() for t in tags.split(","))))
    return tasks


@pytest.mark.parametrize("tag", role_tags("postgresql"))
def test_every_postgresql_tag_gets_the_validation(tag: str) -> None:
    names = [name for role, name, _ in listed("database.yml", tag) if role == "postgresql"]
    assert "Otherwise take each client host's service_address, else its default IPv4 fact" in names
    assert "Refuse settings that dedicated variables manage" in names


@pytest.mark.parametrize(
    "tag", [t for t in role_tags("postgresql") if t not in ("postgresql_install", "postgresql_pki")]
)
def test_a_dry_run_of_any_later_step_ends_on_a_host_without_postgresql(tag: str) -> None:
    names = [name for role, name, _ in listed("database.yml", tag) if role == "postgresql"]
    end = names.index("End this host's check run")
    assert all(not name.startswith(("Write", "Create the cluster")) for name in names[:end])


def test_the_pki_tag_selects_only_controller_side_tasks() -> None:
    tasks = [(name, tags) for role, name, tags in listed("database.yml", "postgresql_pki")]
    # Role pki is included dynamically (--list-tasks shows the includes, not their tasks;
    # test_controller_unprivileged.py runs them).
    assert {
        "The environment's CA on the controller",
        "This host's server certificate, signed on the controller",
    } <= {name for name, _ in tasks}
    assert all("postgresql_pki" in tags or "always" in tags for _, tags in tasks), tasks


@pytest.mark.parametrize("tag", role_tags("gateway"))
def test_every_gateway_tag_gets_the_guards(tag: str) -> None:
    names = [name for role, name, _ in listed("gateway.yml", tag) if role == "gateway"]
    assert "Require every api_key in gateway_model_list to be an os.environ/NAME reference" in names
    assert "Stop a real run the database would refuse" in names
