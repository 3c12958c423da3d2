"""Shared testinfra plumbing for the molecule scenario.

Host selection: testinfra runs every test module against every inventory host; a module
(or test) marked ``@pytest.mark.host_group("database")`` runs only on hosts of that
inventory group, so a database test never runs on the gateway:

    pytestmark = [
        pytest.mark.host_group("database"),
        pytest.mark.systemd_unit("postgresql@17-main.service"),
    ]

Journal on failure: when a test marked ``@pytest.mark.systemd_unit(...)`` fails, the
last 100 journal lines of each named unit on that host are added to the failure report.

Fixtures: ``host`` is testinfra's, reached over SSH as Ansible reaches it (the ``deploy``
user, the key and the pinned host keys of the SSH client configuration lab_up.yml writes,
commands through sudo) rather than one ansible-playbook run per command; ``hostvars``
(the host's inventory variables, untemplated), ``group_host`` (a testinfra host of
another group, e.g. the database host from a gateway test) and ``credential`` (a
lab-generated secret read on the controller).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

JOURNAL_LINES = 100
REPOSITORY = Path(__file__).resolve().parents[3]
# The deployment's shared values (database and role names, ports, paths), read from the one
# place that defines them; the literal ones are all the tests need.
SHARED = yaml.safe_load((REPOSITORY / "group_vars" / "all" / "main.yml").read_text())


def psql(host: Any, sql: str, database: str = SHARED["postgresql_app_database"]) -> str:
    """One value (or `|`-separated rows) from psql as the postgres superuser over the socket."""
    result = host.run(
        "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1 -d %s -c %s", database, sql
    )
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def ansible_playbook(
    inventory: str, playbook: str, *extra_vars: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs a playbook of the repository (ansible-playbook beside this Python) against the
    inventory under test, each of extra_vars given with -e, with options (--check, ...)
    before them; its output is captured."""
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "-i",
            inventory,
            *options,
            str(REPOSITORY / playbook),
            *[arg for value in extra_vars for arg in ("-e", value)],
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        check=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "host_group(name): run only on hosts of this inventory group"
    )
    config.addinivalue_line(
        "markers", "systemd_unit(*units): on failure, print these units' journal"
    )


def _testinfra_host(item: pytest.Item) -> Any | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("_testinfra_host") if callspec else None


def secrets_dir() -> Path:
    """Where the deployment generated its lab secrets and SSH keys on the controller.

    molecule: <ephemeral dir>/secrets (molecule/default/inventory.yml); otherwise the
    lab's .lab/. DEPLOY_SECRETS_DIR overrides both.
    """
    if "DEPLOY_SECRETS_DIR" in os.environ:
        return Path(os.environ["DEPLOY_SECRETS_DIR"])
    if "MOLECULE_EPHEMERAL_DIRECTORY" in os.environ:
        return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"
    return REPOSITORY / ".lab"


SSH_CONFIG = secrets_dir() / "ssh" / "config"
# The environment's CA (role pki): clients verify the balancer's HTTPS certificate with it.
CA_CERT = secrets_dir() / "pki" / "ca.crt"


def client_tls() -> ssl.SSLContext:
    """What a client of the deployment uses: verification against the environment's CA."""
    return ssl.create_default_context(cafile=str(CA_CERT))


def _over_ssh(ansible_host: Any) -> Any:
    """The same host over SSH with sudo, through the lab's SSH client configuration (the
    inventory's SSH options are templates, which testinfra cannot expand)."""
    name = ansible_host.ansible.get_variables()["inventory_hostname"]
    return testinfra.get_host(f"ssh://{name}", ssh_config=str(SSH_CONFIG), sudo=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("host_group")
        host = _testinfra_host(item)
        if marker is None or host is None:
            selected.append(item)
            continue
        groups = host.ansible.get_variables()["group_names"]
        (selected if marker.args[0] in groups else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    marker = item.get_closest_marker("systemd_unit")
    ansible_host = _testinfra_host(item)
    if report.when == "call" and report.failed and marker and ansible_host is not None:
        name = ansible_host.backend.get_pytest_id()
        for unit in marker.args:
            journal = _over_ssh(ansible_host).run(
                "journalctl --no-pager -n %s -u %s", str(JOURNAL_LINES), unit
            )
            report.sections.append(
                (f"journalctl -u {unit} -n {JOURNAL_LINES} on {name}", journal.stdout)
            )
    return report


@pytest.fixture(scope="module")
def host(_testinfra_host: Any) -> Any:
    """The host under test (overrides testinfra's fixture of the same name)."""
    return _over_ssh(_testinfra_host)


@pytest.fixture(scope="module")
def hostvars(_testinfra_host: Any) -> dict[str, Any]:
    """The host's inventory variables as ansible-inventory lists them (untemplated)."""
    return _testinfra_host.ansible.get_variables()


@pytest.fixture(scope="session")
def group_hosts(request: pytest.FixtureRequest) -> Callable[[str], list[Any]]:
    """Returns the testinfra hosts of every inventory host in a group."""
    inventory = request.config.option.ansible_inventory

    def hosts_of(group: str) -> list[Any]:
        return [
            _over_ssh(testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory))
            for name in AnsibleRunner(inventory).get_hosts(group)
        ]

    return hosts_of


@pytest.fixture(scope="session")
def group_host(group_hosts: Callable[[str], list[Any]]) -> Callable[[str], Any]:
    """Returns the testinfra host of the first inventory host in a group."""
    return lambda group: group_hosts(group)[0]


@pytest.fixture(scope="session")
def credentials_dir() -> Path:
    """The lab-generated secrets (credentials/ of secrets_dir())."""
    return secrets_dir() / "credentials"


@pytest.fixture(scope="session")
def credential(credentials_dir: Path) -> Callable[[str], str]:
    """Reads a generated secret by file name, e.g. credential("gateway_master_key")."""

    def read(name: str) -> str:
        return (credentials_dir / name).read_text().strip()

    return read


def build_changed_release(
    workdir: Path, module: str = "__init__.py", line: str = "# rolling deploy test"
) -> tuple[Path, str]:
    """A release of the same code with one more line in one module: a new version, as any
    change makes (a comment by default; a deliberately broken line for the failure test)."""
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(clone)], check=True)
    with (clone / "app/src/llm_gateway" / module).open("a") as source:
        source.write(f"{line}  # {uuid.uuid4().hex}\n")
    release_dir = workdir / "build"
    subprocess.run(
        [str(clone / "scripts/build-release.sh")],
        check=True,
        env={**os.environ, "PYTHON": sys.executable, "RELEASE_DIR": str(release_dir)},
        cwd=clone,
    )
    return release_dir, (release_dir / "VERSION").read_text().strip()


@pytest.fixture(scope="session")
def changed_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(release dir, version) of the deployed code plus a comment: a new release, built
    once for the tests that deploy or preview one."""
    return build_changed_release(tmp_path_factory.mktemp("changed-release"))
