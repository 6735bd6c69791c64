"""The filesystem fragmentation matrix: on every filesystem a backing file
can live on, for every layout a file can have, at offsets 0, one block and
an odd number of blocks, dm-loop picks the mode and reason module/dm-loop.rst
promises, its extent table agrees with FIEMAP (`dmloop-inspect compare`),
fio's crc32c verification passes through the device, and after removal the
file holds exactly the verified data at the offset.

Each (filesystem, layout) pair builds its backing file with a recipe from
fixtures/recipes/ on a fresh filesystem and checks the recipe's statement
with FIEMAP first; its later offsets reuse the filesystem, and the file
where FIEMAP shows it still is what the recipe stated (else the recipe
runs again).  The NFS server starts once per guest session.
Cells that cannot exist (reflink on ext4...) are run too: the recipe must
fail the way the matrix says.  Cells that are not run say why (skip).

By default the fast subset below runs (every filesystem and every layout at
least once; `make check`); DMLOOP_MATRIX=full runs all of it (debug/matrix,
`make matrix`: needs a scratch disk of 5 GiB or more for the big layout).
The table is printed at the end and written to build/matrix/ as Markdown
and CSV (matrix.* for the full run, subset-<kernel>.* for the subset;
DMLOOP_MATRIX_OUT=<base> elsewhere).  debug/matrix runs two guests:
DMLOOP_MATRIX_ORDER=reverse takes the cell list from its end, and with
DMLOOP_MATRIX_CLAIMS=<shared directory> a guest skips the cells the other
has taken.
"""

import os

import pytest

import dmloop
import matrix_util as mu

# (filesystem, layout, offsets in blocks): every filesystem once, every
# layout but `big` (4 GiB written: the full matrix only; big-tail crosses
# 4 GiB here, through 9p) once, every offset, block and file mode, and one
# cell that cannot exist.  About 3-4 minutes of guest time (make check).
FAST = [
    ("ext2", "contiguous", (7,)),
    ("ext3", "odd-size", (1,)),
    ("ext4-4k", "heavy", (0,)),
    ("ext4-4k", "reflink", (0,)),
    ("ext4-1k", "light", (7,)),
    ("xfs", "prealloc-part", (7,)),
    ("xfs-reflink", "reflink", (1,)),
    ("btrfs", "sparse", (0,)),
    ("tmpfs", "prealloc-full", (0,)),
    ("9p", "big-tail", (1,)),
    ("nfs", "reflink", (0,)),
]


def _full():
    """Every (filesystem, layout) pair at all three offsets: one filesystem
    and one file serve the three (matrix_util.run_cell checks the file
    against its recipe before each reuse and builds it again where file
    mode changed it); pairs that are not run or cannot exist once; `big`
    (4 GiB written) last."""
    cells = [(fs, lay, mu.OFFSETS) for fs in mu.FS_NAMES for lay in mu.LAYOUTS
             if lay != "big"]
    big = [(fs, "big", mu.OFFSETS) for fs in mu.FS_NAMES]
    if os.environ.get("DMLOOP_MATRIX_ORDER") == "reverse":
        # A second guest works from the other end (debug/matrix merges).
        return cells[::-1] + big[::-1]
    return cells + big


FULL = _full()
IS_FULL = os.environ.get("DMLOOP_MATRIX") == "full"
CELLS = FULL if IS_FULL else FAST


def _report_base():
    if os.environ.get("DMLOOP_MATRIX_OUT"):
        return os.environ["DMLOOP_MATRIX_OUT"]
    name = "matrix" if IS_FULL else "subset-%s" % os.uname().release
    return str(mu.REPO / "build" / "matrix" / name)


def _title():
    return "dm-loop filesystem matrix (%s)" % ("full" if IS_FULL else "fast subset")


class _Report:
    """Prints the table in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter):
        if not mu.RESULTS:
            return
        md, csvp = mu.write_report(mu.RESULTS, _report_base(), _title())
        tr = terminalreporter
        tr.section("dm-loop filesystem matrix")
        for line in mu.text_table(mu.RESULTS).splitlines():
            tr.write_line(line)
        tr.write_line("written to %s and %s" % (md, csvp))


@pytest.fixture(scope="module", autouse=True)
def matrix_report(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("dmloop-matrix-report"):
        pm.register(_Report(), "dmloop-matrix-report")
    yield


def _claim(directory, cell):
    """True if this guest takes `cell`: an O_EXCL create in a directory both
    guests share (the repository's 9p mount) decides."""
    os.makedirs(directory, exist_ok=True)
    try:
        os.close(os.open(os.path.join(directory, cell), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@pytest.mark.parametrize("fs,layout,offsets", CELLS,
                         ids=["%s/%s/%s" % (f, lay, ",".join(map(str, o))) for f, lay, o in CELLS])
def test_cell(fs, layout, offsets):
    """A file of this layout on this filesystem: the expected mode and
    reason, compare agrees, fio verifies, the file holds the data after
    removal; or, for a cell that cannot exist, the recipe fails as the
    matrix says."""
    claims = os.environ.get("DMLOOP_MATRIX_CLAIMS")
    if claims and not _claim(claims, "%s_%s" % (fs, layout)):
        pytest.skip("run by the other guest (debug/matrix)")
    rows, failures = mu.run_cell(fs, layout, offsets, dmloop.scratch_disk(0))
    mu.write_report(mu.RESULTS, _report_base(), _title())
    if rows[0].result in ("not run", "not available"):
        pytest.skip("%s: %s" % (rows[0].result, rows[0].note))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
