"""Nothing runs as root on the controller (issue 11, item 2).

The controller-side steps run as an unprivileged system user with no sudo, against an
inventory that sets ``ansible_become: true`` for all hosts (staging and production once
did, and the implicit localhost inherits ``all``): the postgresql role's PKI (the CA and
the database's server certificate, through the real role and database.yml with only the
``postgresql_pki`` tag) and the release build (scripts/build-release.sh). Any become on the
controller would call sudo, which that user does not have; any connection to the database
host would go to an address on the loopback where nothing answers. Both must succeed and
leave files owned by that user.

CI and the lab run as root, which is why this test creates the user (idempotently) and
drops to it with runuser. The checkout and its .venv may sit where that user cannot read
(under /root, or a venv whose python is pyenv's in /root): the test works on a copy of the
repository (HEAD plus the working tree's tracked and new files) in a directory the user
owns, and on a readable copy of the venv's site-packages run by an interpreter the user can
execute.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml
from playbooks import REPOSITORY

OPERATOR = "llmgw-ci-operator"
# Kept between runs, so that a second run downloads nothing from the package index again.
PIP_CACHE = Path("/var/tmp") / f"{OPERATOR}-pip-cache"
DB_HOST = "pki-db"
# Nothing listens there: a connection attempt fails loudly instead of reaching anything.
UNREACHABLE = {"ansible_host": "127.0.0.254", "ansible_port": 1}

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason=f"needs root to create the unprivileged user {OPERATOR} and runuser to it",
    ),
    pytest.mark.skipif(
        shutil.which("runuser") is None or shutil.which("useradd") is None,
        reason="needs runuser and useradd (util-linux, passwd)",
    ),
]


def ensure_operator() -> pwd.struct_passwd:
    """The system user, with a home of its own (Ansible's local temporary files go there)."""
    try:
        owner = pwd.getpwnam(OPERATOR)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", f"/var/lib/{OPERATOR}",
             "--shell", "/usr/sbin/nologin", OPERATOR],
            check=True,
        )  # fmt: skip
        owner = pwd.getpwnam(OPERATOR)
    home = Path(owner.pw_dir)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(home, owner.pw_uid, owner.pw_gid)
    return owner


def as_operator(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", OPERATOR, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
         *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def copy_checkout(destination: Path) -> None:
    """HEAD as a clone, with the working tree's uncommitted and new (not ignored) files."""
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPOSITORY), str(destination)],
        check=True,
    )
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPOSITORY / os.fsdecode(name)
        if source.is_file():
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def readable_python(work: Path, env: dict[str, str], owner: pwd.struct_passwd) -> list[str]:
    """An interpreter the operator can run, with this venv's packages importable."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    candidates = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for python in candidates:
        ran = as_operator([python, "-c", probe], env, work)
        if ran.returncode == 0 and ran.stdout.strip() == version:
            break
    else:
        pytest.skip(f"no Python {version} that {OPERATOR} can run (tried {candidates})")
    readable = as_operator([python, "-c", "import ansible, cryptography, pip"],
                           {**env, "PYTHONPATH": str(site_packages)}, work)  # fmt: skip
    if readable.returncode != 0:
        copy = work / "site-packages"
        shutil.copytree(
            site_packages,
            copy,
            symlinks=True,
            # The collections the steps use: community.crypto only (of 470 MB).
            ignore=lambda directory, names: (
                [n for n in names if n != "community"]
                if directory.endswith("ansible_collections")
                else [n for n in names if n != "crypto"]
                if directory.endswith("ansible_collections/community")
                else []
            ),
        )
        subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(copy)], check=True)
        site_packages = copy
    env["PYTHONPATH"] = str(site_packages)
    return [python]


@pytest.fixture(scope="module")
def operator_checkout():
    owner = ensure_operator()
    # Not under pytest's basetemp: /tmp/pytest-of-root is 0700, and any other pytest run as
    # root on this machine puts it back to 0700 at once. /var/tmp is open to everyone.
    work = Path(tempfile.mkdtemp(prefix="llmgw-unprivileged-", dir="/var/tmp"))
    try:
        yield from _operator_checkout(owner, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _operator_checkout(owner: pwd.struct_passwd, work: Path):
    repo = work / "repo"
    copy_checkout(repo)
    PIP_CACHE.mkdir(mode=0o700, exist_ok=True)
    for path in (work, PIP_CACHE):
        subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(path)], check=True)
    env = {
        "HOME": owner.pw_dir,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "PIP_CACHE_DIR": str(PIP_CACHE),
    }
    python = readable_python(work, env, owner)
    # Proof of the premise: this user has no sudo (none installed, or no rule for it).
    sudo = as_operator(["sh", "-c", "sudo -n true"], env, work)
    assert sudo.returncode != 0, "the test user must not be able to sudo"
    yield owner, repo, env, python


def owned_by(path: Path, owner: pwd.struct_passwd) -> bool:
    return path.stat().st_uid == owner.pw_uid


def test_pki_is_created_without_become(operator_checkout) -> None:
    owner, repo, env, python = operator_checkout
    inventory = repo / "inventory" / "unprivileged"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    # What staging and production once set: the implicit localhost inherits it.
                    "vars": {"ansible_become": True, "ansible_user": "deploy"},
                    "children": {
                        "database": {
                            "hosts": {DB_HOST: {**UNREACHABLE, "service_address": "192.0.2.19"}}
                        },
                    },
                }
            }
        )
    )
    (inventory / "group_vars" / "all" / "main.yml").write_text(
        yaml.safe_dump(
            {
                "deploy_environment": "unprivileged",
                # A first run: the CA is created on purpose (role pki refuses otherwise).
                "pki_ca_create": True,
                "deploy_secrets_dir": "{{ inventory_dir }}/../../.secrets/unprivileged",
                "vault_postgresql_app_owner_password": "owner-pw-test",
                "vault_postgresql_app_user_password": "user-pw-test",
                "vault_gateway_master_key": "sk-master-test",
                "vault_gateway_provider_keys": {},
                "gateway_model_list": [],
            }
        )
    )
    subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(inventory)], check=True)
    result = as_operator(
        [*python, "-m", "ansible.cli.playbook", "-i", str(inventory / "hosts.yml"), "database.yml",
         "--tags", "postgresql_pki", "--skip-tags", "postgresql_validate"],
        {**env, "ANSIBLE_GATHERING": "explicit", "ANSIBLE_NOCOLOR": "1"},
        repo,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "changed=" in output and "unreachable=0" in output and "failed=0" in output, output
    pki = repo / ".secrets" / "unprivileged" / "pki"
    for name in ("ca.key", "ca.crt", f"{DB_HOST}.key", f"{DB_HOST}.crt"):
        assert (pki / name).is_file(), f"{name} missing:\n{output}"
        assert owned_by(pki / name, owner), f"{name} is not owned by {OPERATOR}"
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0


def test_release_is_built_without_root(operator_checkout) -> None:
    owner, repo, env, python = operator_checkout
    target = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = as_operator(
        ["scripts/build-release.sh", target],
        {**env, "PYTHON": python[0], "RELEASE_DIR": str(repo / "build")},
        repo,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    version = (repo / "build" / "VERSION").read_text().strip()
    artifacts = list((repo / "build").glob(f"llm-gateway-{version}-py*.tar"))
    assert len(artifacts) == 1, output
    assert owned_by(artifacts[0], owner)
    assert owned_by(repo / "build" / "VERSION", owner)
    with tarfile.open(artifacts[0]) as tar:
        names = tar.getnames()
    assert any(n.endswith(".whl") and "llm_gateway" in n for n in names), names
