"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch
from hub_server import HubServer

# --- Hub fixtures -------------------------------------------------------------------
# A local Hub-compatible server (tests/hub_server.py) for one test. Clients run in fresh
# subprocesses with ``env=hub.env(tmp_path)`` because huggingface_hub reads HF_ENDPOINT when
# it is imported; ``hub.files(repo_id, revision)``, ``hub.commits``, ``hub.branches`` and
# ``hub.state.requests`` show what the server received and stored.


@pytest.fixture
def hub():
    """A running :class:`hub_server.HubServer` on 127.0.0.1, stopped after the test."""
    with HubServer() as server:
        yield server


@pytest.fixture
def step_clock(monkeypatch):
    """The benchmark harness's budgets read a clock that advances 0.01 "CPU second" a reading: where a run stops and
    where its curve points fall depend on the code alone, never on the machine's speed or load."""
    from training import harness

    clock = harness.StepClock(0.01)
    monkeypatch.setattr(harness.CLOCK, "now", clock)
    return clock


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and problems: one torch thread avoids synchronisation overhead and contention on a busy
    machine (used by modules with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
