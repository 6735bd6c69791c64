"""Shared fixtures for the host-side tests (run on the host with pytest)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo():
    """The repository root (the directory holding debug/, module/, tests/)."""
    return REPO


def run_vm(args, timeout=3600, env=None):
    """Run debug/vm with `args` (stdin closed, as in CI); CompletedProcess with text
    stdout/stderr and .elapsed (seconds)."""
    import time
    e = dict(os.environ)
    e.pop("VM_VERBOSE", None)
    # KERNEL is debug/vm's default kernel; these tests choose theirs with
    # --kernel, and a KERNEL=7.2 meant for make (a name, not a path) must not
    # reach them.
    e.pop("KERNEL", None)
    # A guest of these tests runs for seconds: one that hangs fails in
    # minutes, not after debug/vm's default half hour.
    e.setdefault("VM_TIMEOUT", "600")
    if env:
        e.update(env)
    t0 = time.monotonic()
    p = subprocess.run([str(REPO / "debug" / "vm")] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout, env=e)
    p.elapsed = time.monotonic() - t0
    return p


@pytest.fixture(scope="session")
def vm():
    """The run_vm() helper: vm(["--disk", "64M", "--", "true"]) -> CompletedProcess."""
    return run_vm
