"""Unit tests of the evidence role's decisions (roles/evidence/filter_plugins/evidence.py).

The filter plugin is plain Python: its directory goes on sys.path so that the tests
``import evidence``. The fixtures are the facts of a healthy deployment (samples.py: a
balancer in front of two gateways, one database); each test changes one thing and checks
what an operator would see.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import samples

REPOSITORY = Path(__file__).resolve().parents[2]
FILTER_PLUGINS = REPOSITORY / "roles" / "evidence" / "filter_plugins"
if str(FILTER_PLUGINS) not in sys.path:
    sys.path.insert(0, str(FILTER_PLUGINS))


@pytest.fixture
def deployment() -> samples.Deployment:
    """A healthy deployment shaped like the molecule scenario (balancer, two gateways, db)."""
    return samples.Deployment()


@pytest.fixture
def gateway() -> dict[str, Any]:
    return samples.gateway_facts()


@pytest.fixture
def database() -> dict[str, Any]:
    return samples.database_facts()


@pytest.fixture
def guard() -> dict[str, Any]:
    """evidence_withhold's answer when nothing leaked."""
    return {
        "files": {},
        "withheld": [],
        "secrets_searched": len(samples.SECRETS),
        "files_searched": 9,
    }
