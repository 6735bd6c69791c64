"""pytest scaffolding for the guest suite: run it inside the VM with

    debug/vm [--disk 1G ...] -- /usr/bin/python3 -m pytest tests/guest

- Outside the VM (no DMLOOP_VM=1, which debug/vm sets) every test here is
  skipped, so a host-side `pytest tests` stays harmless.
- After every test the kernel log written since the test started is checked
  for fault lines (patterns from debug/faults.py, shared with debug/vm); a
  fault fails the test (during the test body) or its teardown.
- The session fixture `dmloop_module` (autouse) insmods the module under
  test, $DMLOOP_KO or module/dm-loop.ko, and rmmods it at the end (a failing
  rmmod fails the run).  DMLOOP_KO=none loads nothing; DMLOOP_KO_ARGS gives
  module parameters.
- Device-mapper devices created with dmloop.create() during a test and left
  behind are removed after it (with a warning) so they do not break the
  next; devices of module/session-scoped fixtures are left alone.
"""

import os
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import dmloop  # noqa: E402

IN_VM = os.environ.get("DMLOOP_VM") == "1"
_kmsg = None


def _is_guest_item(item):
    try:
        return Path(str(item.fspath)).resolve().is_relative_to(HERE)
    except (OSError, ValueError):
        return False


def pytest_configure(config):
    global _kmsg
    config.addinivalue_line("markers", "stress: a long reliability test; skipped unless "
                            "DMLOOP_STRESS=1 (make stress runs them: -m stress)")
    if IN_VM and _kmsg is None:
        _kmsg = dmloop.Kmsg()


def pytest_collection_modifyitems(config, items):
    if IN_VM:
        return
    skip = pytest.mark.skip(reason="guest test: runs only inside the VM "
                                   "(debug/vm -- /usr/bin/python3 -m pytest tests/guest)")
    for item in items:
        if _is_guest_item(item):
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _kmsg is not None and _is_guest_item(item):
        _kmsg.mark()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _kmsg is None or call.when not in ("call", "teardown") or not _is_guest_item(item):
        return
    rep = outcome.get_result()
    lines = _kmsg.new_lines()
    report = dmloop.kmsg_faults(lines)
    if _kmsg.lost:
        warnings.warn("kernel log records were lost (ring buffer overrun) during %s" % item.nodeid)
    if not report:
        return
    msg = ("kernel fault in the guest log during %s of %s:\n%s"
           % ("the test" if call.when == "call" else "teardown", item.nodeid, report))
    if rep.failed and rep.longrepr is not None:
        msg = "%s\n\n(the test had also failed:)\n%s" % (msg, rep.longreprtext)
    rep.outcome = "failed"
    rep.longrepr = msg
    if hasattr(rep, "wasxfail"):
        del rep.wasxfail


def _modname(ko):
    p = subprocess.run(["modinfo", "-F", "name", str(ko)], capture_output=True, text=True)
    name = p.stdout.strip()
    if p.returncode == 0 and name:
        return name.replace("-", "_")
    base = os.path.basename(str(ko))
    for ext in (".xz", ".gz", ".zst"):
        if base.endswith(ext):
            base = base[:-len(ext)]
    return base[:-3].replace("-", "_") if base.endswith(".ko") else base.replace("-", "_")


def _loaded(name):
    return os.path.exists("/sys/module/%s/initstate" % name)


def _rmmod(name, tries=10):
    p = None
    for _ in range(tries):
        p = subprocess.run(["rmmod", name], capture_output=True, text=True)
        if p.returncode == 0 or not _loaded(name):
            return None
        time.sleep(0.3)
    return p.stderr.strip() or "exit %d" % p.returncode


class Module:
    def __init__(self, name, path):
        self.name, self.path = name, path

    def __repr__(self):
        return "Module(%r, %r)" % (self.name, self.path)


@pytest.fixture(scope="session", autouse=True)
def dmloop_module():
    """Load the module under test for the whole session; yields a Module (name, path),
    or None with DMLOOP_KO=none."""
    if not IN_VM:
        pytest.skip("not inside the VM")
    spec = os.environ.get("DMLOOP_KO", "module/dm-loop.ko")
    if spec == "none":
        yield None
        return
    ko = Path(spec)
    if not ko.is_absolute():
        ko = REPO / ko
    if not ko.exists():
        pytest.fail("module under test %s does not exist: build it first (make), "
                    "or point DMLOOP_KO at a .ko" % ko, pytrace=False)
    name = _modname(ko)
    dmloop.modprobe("dm-mod")
    if _loaded(name):
        e = _rmmod(name)
        if e:
            pytest.fail("%s is already loaded and cannot be unloaded: %s" % (name, e), pytrace=False)
    args = shlex.split(os.environ.get("DMLOOP_KO_ARGS", ""))
    p = subprocess.run(["insmod", str(ko)] + args, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail("insmod %s failed: %s" % (ko, p.stderr.strip()), pytrace=False)
    yield Module(name, str(ko))
    for dev in list(dmloop.created_devices):
        try:
            dmloop.remove(dev, force=True)
        except Exception:
            pass
    e = _rmmod(name)
    if e:
        pytest.fail("rmmod %s failed at the end of the session: %s" % (name, e), pytrace=False)


@pytest.fixture(autouse=True)
def _dm_leftovers():
    """Remove device-mapper devices a test created with dmloop.create() and left behind.

    Only those created during the test (its body and function-scoped fixtures):
    a module- or session-scoped fixture's devices exist before this fixture
    starts (wider scopes are set up first) and are left alone."""
    before = set(dmloop.created_devices)
    yield
    left = [d for d in dmloop.created_devices if d not in before]
    problems = []
    for dev in reversed(left):      # the top of a stack first
        try:
            dmloop.remove(dev, retries=5)
        except Exception as e:
            try:
                dmloop.remove(dev, retries=3, force=True)
            except Exception:
                problems.append("%s: %s" % (dev, e))
    if left:
        warnings.warn("test left device-mapper devices behind (removed): %s" % ", ".join(left))
    if problems:
        pytest.fail("could not remove leftover devices: %s" % "; ".join(problems), pytrace=False)


@pytest.fixture
def scratch_fs():
    """Factory fixture: scratch_fs("ext4", dev=None, mkfs_args=(), mount_opts=None)
    mkfs+mounts a scratch disk and returns the mount point (Path); unmounted after
    the test."""
    stack = []

    def make(fstype, **kw):
        cm = dmloop.mounted_fs(fstype, **kw)
        mp = cm.__enter__()
        stack.append(cm)
        return mp

    yield make
    errors = []
    while stack:
        cm = stack.pop()
        try:
            cm.__exit__(None, None, None)
        except Exception as e:
            errors.append(str(e))
    if errors:
        pytest.fail("scratch_fs cleanup failed: %s" % "; ".join(errors), pytrace=False)
