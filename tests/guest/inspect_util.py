"""Run dmloop-inspect in the guest, and lay out files for it to look at.

- inspect() runs tools/dmloop-inspect and its ASan/UBSan twin
  (tools/dmloop-inspect-asan, `make -C tools asan`) with the same arguments
  and fails on any sanitizer report, a signal, or an unexpected exit status.
  $DMLOOP_INSPECT_TOOLS names another directory holding both binaries.
- make_contiguous() / make_fragmented() give a file in one extent and a
  file scattered over single free blocks (ext4 with 4 KiB or 1 KiB blocks,
  XFS).
- filefrag() runs `filefrag -v` (as saved for --filefrag) and parses its
  extent lines.

Used by tests/guest/test_inspect_guest.py and fixtures/capture-guest.py.
Stdlib only: importing this on the host is harmless.
"""

import os
import re
import subprocess
from pathlib import Path

import dmloop

REPO = Path(__file__).resolve().parents[2]
# Another build of the tools (e.g. a deliberately broken one) to test.
TOOLS = Path(os.environ.get("DMLOOP_INSPECT_TOOLS") or REPO / "tools")
BINARIES = ("dmloop-inspect", "dmloop-inspect-asan")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer",
                   "AddressSanitizer:DEADLYSIGNAL", "LeakSanitizer has encountered")
SANITIZER_EXIT = 99
MiB = 1 << 20


def build_tools():
    """make both binaries (a no-op when they are up to date); not when
    $DMLOOP_INSPECT_TOOLS points elsewhere."""
    if os.environ.get("DMLOOP_INSPECT_TOOLS"):
        return
    subprocess.run(["make", "-s", "-C", str(TOOLS)] + list(BINARIES), check=True,
                   capture_output=True)


def run_tool(binary, *args, expect=None, env=None, timeout=300):
    """Run one binary; CompletedProcess with text output.  Fails on a
    sanitizer report, a signal, or an exit status other than `expect`."""
    e = dict(os.environ)
    e.pop("DMLOOP_DEBUGFS", None)
    e["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=%d" % SANITIZER_EXIT
    e["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=%d" % SANITIZER_EXIT
    if env:
        e.update(env)
    cmd = [str(TOOLS / binary)] + [str(a) for a in args]
    p = subprocess.run(cmd, env=e, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    p.stdout = p.stdout.decode("utf-8", "replace")
    p.stderr = p.stderr.decode("utf-8", "replace")
    where = "%s\nexit %d\nstdout:\n%s\nstderr:\n%s" % (" ".join(cmd), p.returncode,
                                                        p.stdout, p.stderr)
    for mark in SANITIZER_MARKS:
        assert mark not in p.stderr, "sanitizer report: " + where
    assert p.returncode >= 0, "killed by signal %d: %s" % (-p.returncode, where)
    assert p.returncode != SANITIZER_EXIT, "sanitizer exit status: " + where
    if expect is not None:
        assert p.returncode == expect, "want exit %d: %s" % (expect, where)
    if p.returncode == 2:
        assert p.stderr.startswith("dmloop-inspect"), where
    return p


def inspect(*args, expect=None, same_output=True, env=None):
    """Run both binaries with `args`; returns the plain binary's result.
    Both must exit alike and, with same_output, print the same."""
    plain = run_tool(BINARIES[0], *args, expect=expect, env=env)
    asan = run_tool(BINARIES[1], *args, expect=plain.returncode, env=env)
    if same_output:
        assert asan.stdout == plain.stdout, (args, plain.stdout, asan.stdout)
    return plain


# ------------------------------------------------------------ layouts

def make_fragmented(mp, path, nblocks, seed):
    """`path`: nblocks of random data, each block on its own between used
    blocks (dmloop.write_fragmented: the free space is filled, 2*nblocks
    one-block holes are punched, the file is written one block at a time
    with O_DIRECT and fsync'ed, then the fillers are deleted).  Returns the
    data."""
    import random
    blk = os.statvfs(mp).f_bsize
    data = random.Random(seed).randbytes(nblocks * blk)
    dmloop.write_fragmented(mp, path, data, blk)
    return data


def make_contiguous(path, size, seed):
    """`path`: size bytes of random data, written and fsync'ed at once (one
    extent on a fresh filesystem)."""
    import random
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


# ------------------------------------------------------------ filefrag

FILEFRAG_EXTENT = re.compile(
    r"^\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):(.*)$")


def filefrag(path, *opts):
    """`filefrag -v [opts] path`: (text, [(ext, logical, physical, length, rest)]),
    numbers in the listing's units."""
    p = subprocess.run(["filefrag", "-v"] + list(opts) + [str(path)],
                       capture_output=True, text=True, check=True)
    ext = []
    for line in p.stdout.splitlines():
        m = FILEFRAG_EXTENT.match(line)
        if m:
            ext.append((int(m.group(1)), int(m.group(2)), int(m.group(4)),
                        int(m.group(6)), m.group(7)))
    return p.stdout, ext
