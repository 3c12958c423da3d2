"""The fingerprint check the postgresql role applies to the PGDG key before trusting it."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import yaml
from playbooks import REPOSITORY

sys.path.insert(0, str(REPOSITORY / "roles" / "postgresql" / "filter_plugins"))
import openpgp

# The key postgresql-common and www.postgresql.org/media/keys/ACCC4CF8.asc publish.
PGDG_KEY = (Path(__file__).parent / "data" / "pgdg-ACCC4CF8.asc").read_text()
PGDG_FINGERPRINT = "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8"


def test_the_pgdg_key_has_the_published_fingerprint() -> None:
    assert openpgp.openpgp_fingerprints(PGDG_KEY) == [PGDG_FINGERPRINT]


def test_the_role_pins_that_fingerprint() -> None:
    defaults = yaml.safe_load((REPOSITORY / "roles/postgresql/defaults/main.yml").read_text())
    assert defaults["postgresql_pgdg_key_fingerprint"].replace(" ", "") == PGDG_FINGERPRINT


def test_binary_and_armored_agree() -> None:
    lines = PGDG_KEY.strip().splitlines()
    body = lines[lines.index("") + 1 : -1]
    binary = base64.b64decode("".join(line for line in body if not line.startswith("=")))
    assert openpgp.openpgp_fingerprints(binary) == [PGDG_FINGERPRINT]


def test_a_changed_key_has_another_fingerprint() -> None:
    lines = PGDG_KEY.strip().splitlines()
    start = lines.index("") + 1
    raw = bytearray(base64.b64decode(lines[start]))
    raw[20] ^= 0x01  # one bit of the RSA modulus
    tampered = [*lines[:start], base64.b64encode(raw).decode(), *lines[start + 1 :]]
    fingerprints = openpgp.openpgp_fingerprints("\n".join(tampered))
    assert len(fingerprints) == 1
    assert fingerprints != [PGDG_FINGERPRINT]


def test_something_else_is_refused() -> None:
    with pytest.raises(ValueError, match="ASCII-armored"):
        openpgp.openpgp_fingerprints("<html>404 Not Found</html>")
