"""Shared fixtures: a real embedded Dovecot per test session (per xdist worker)."""

from __future__ import annotations

import pytest

from harness.targets.managed_dovecot import ManagedDovecot


@pytest.fixture(scope="session")
def dovecot():
    with ManagedDovecot(accounts=12) as dc:
        yield dc


@pytest.fixture(scope="session")
def target(dovecot):
    return dovecot.target


@pytest.fixture(scope="session")
def lock_target():
    """A second embedded Dovecot with pop3_lock_session = yes (profile dovecot-lock), for the lock faults."""
    with ManagedDovecot(accounts=4, pop3_lock=True) as dc:
        yield dc.target


@pytest.fixture
def target_file(target, tmp_path):
    path = tmp_path / "target.yaml"
    target.dump(path)
    return path
