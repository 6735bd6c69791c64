"""Static checks on the kernel module: sparse and checkpatch.pl --strict.

Exceptions to checkpatch are written down here, each with its reason, and
apply to the named file only.
"""
import glob
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(REPO, "module")
CHECKPATCH = os.path.join(REPO, "build", "checkpatch", "scripts", "checkpatch.pl")

# file -> {checkpatch type: why it does not apply}
EXCEPTIONS = {
    "compat.h": {
        "LINUX_VERSION_CODE": "compat.h exists to hold the version tests, in one place",
        "CONSTANT_COMPARISON": "LINUX_VERSION_CODE >= KERNEL_VERSION() reads as the kernel's own code does",
    },
    "dm-loop.h": {
        "MACRO_ARG_PRECEDENCE": "loop_stat_inc()'s field is a member name; it cannot be parenthesised",
    },
}

SOURCES = sorted(os.path.basename(p) for p in
                 glob.glob(os.path.join(MODULE, "*.[ch]"))
                 if not p.endswith(".mod.c"))


@pytest.mark.parametrize("name", SOURCES)
def test_checkpatch_strict(name):
    """checkpatch.pl --strict finds nothing but the documented exceptions."""
    if not os.path.exists(CHECKPATCH):
        pytest.fail("checkpatch.pl missing: run `make checkpatch` (needs linux-source-6.1)")
    cmd = [CHECKPATCH, "--strict", "--no-tree", "--terse", "--show-types", "-f", name]
    ignore = EXCEPTIONS.get(name, {})
    if ignore:
        cmd += ["--ignore", ",".join(ignore)]
    p = subprocess.run(cmd, cwd=MODULE, capture_output=True, text=True)
    problems = [l for l in p.stdout.splitlines() if ": WARNING:" in l or ": ERROR:" in l or ": CHECK:" in l]
    assert not problems and p.returncode == 0, "\n".join(problems) or p.stdout + p.stderr


def test_sparse_clean():
    """sparse (make C=2) reports nothing in the module's own files."""
    p = subprocess.run(["make", "-C", MODULE, "C=2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout + p.stderr
    ours = [l for l in out.splitlines()
            if MODULE in l and ("warning" in l or "error" in l)]
    assert not ours, "\n".join(ours)
    assert "CHECK" in out, "sparse did not run:\n" + out[-2000:]


def test_module_builds_with_werror():
    """Our own files are built with -Werror (module/Kbuild)."""
    with open(os.path.join(MODULE, "Kbuild")) as f:
        assert "-Werror" in f.read()
