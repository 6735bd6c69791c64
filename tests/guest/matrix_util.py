"""The filesystem x layout x offset matrix (test_matrix.py, debug/matrix).

- FILESYSTEMS: the ten places a backing file can live, how to make a fresh
  one and what dm-loop must say about a file there.
- LAYOUTS: the recipes in fixtures/recipes/layouts.py.
- check_layout(): a recipe's statement against FIEMAP (or SEEK_HOLE).
- expected(): the mode and reason module/dm-loop.rst promises for a cell.
- run_cell(): one (filesystem, layout) pair at its offsets; fills a Row per
  offset with what happened.
- write_report(): the Markdown and CSV tables.

Stdlib only.
"""

import atexit
import contextlib
import csv
import errno
import fcntl
import io
import os
import re
import struct
import sys
import tempfile
import time
from collections import namedtuple
from dataclasses import dataclass, field, fields
from pathlib import Path

import dmloop
import filemode_util as fm
from safety_util import sparse_block_mode

REPO = dmloop.REPO
sys.path.insert(0, str(REPO / "fixtures" / "recipes"))
import layouts  # noqa: E402  (fixtures/recipes/layouts.py)
from layouts import CannotExist, KiB, MiB, GiB  # noqa: E402

INSPECT = REPO / "tools" / "dmloop-inspect"
DEV = "mx0"
OFFSETS = (0, 1, 7)            # device offset in blocks: zero, one, an odd number

# ------------------------------------------------------------ the filesystems

# fstype: what is mounted (None: no mkfs); mkfs: extra mkfs arguments;
# reason: the file-mode reason whatever the layout (None: the layout decides);
# reflink_flag_refuses_bmap: bmap gives 0 for every block of an inode that
# has ever shared an extent (XFS: xfs_vm_bmap checks xfs_is_cow_inode()).
FsSpec = namedtuple("FsSpec", "name fstype mkfs small reason reflink_flag_refuses_bmap")
FILESYSTEMS = {
    "ext2": FsSpec("ext2", "ext2", ("-b", "4096", "-m", "0", "-E", "nodiscard"), 64 * MiB, None, False),
    "ext3": FsSpec("ext3", "ext3", ("-b", "4096", "-m", "0", "-E", "nodiscard"), 64 * MiB, None, False),
    "ext4-4k": FsSpec("ext4-4k", "ext4", ("-b", "4096", "-m", "0", "-E", "nodiscard"), 64 * MiB, None, False),
    "ext4-1k": FsSpec("ext4-1k", "ext4", ("-b", "1024", "-m", "0", "-E", "nodiscard"), 64 * MiB, None, False),
    "xfs": FsSpec("xfs", "xfs", ("-K", "-m", "reflink=0"), 300 * MiB, None, True),
    "xfs-reflink": FsSpec("xfs-reflink", "xfs", ("-K", "-m", "reflink=1"), 300 * MiB, None, True),
    "btrfs": FsSpec("btrfs", "btrfs", ("-K",), 256 * MiB, "no_bmap", False),
    "tmpfs": FsSpec("tmpfs", None, (), None, "no_bdev", False),
    "9p": FsSpec("9p", None, (), None, "no_bdev", False),
    # NFS v4.2 from the guest's own nfsd, exporting XFS with reflink (so the
    # reflink cell exists); recipes run on the server side.
    "nfs": FsSpec("nfs", "xfs", ("-K", "-m", "reflink=1"), 300 * MiB, "no_bdev", False),
}
FS_NAMES = list(FILESYSTEMS)
LAYOUTS = list(layouts.RECIPES)

# Cells not run, and why (not a property of dm-loop: of the place or the VM).
NOT_RUN = {
    ("tmpfs", "light"): "tmpfs keeps file data in memory pages: no block layout to fragment",
    ("tmpfs", "heavy"): "tmpfs keeps file data in memory pages: no block layout to fragment",
    ("9p", "light"): "the blocks are on the host's filesystem: the guest can neither "
                     "shape nor see them (no FIEMAP over 9p)",
    ("9p", "heavy"): "the blocks are on the host's filesystem: the guest can neither "
                     "shape nor see them (no FIEMAP over 9p)",
    ("tmpfs", "big"): "4 GiB of data does not fit in the guest's memory (tmpfs)",
    ("9p", "big"): "would write 4 GiB to the host's disk through 9p; big-tail covers "
                   "files past 4 GiB on 9p",
}
# Cells that cannot exist: the recipe must fail with CannotExist, and the
# message must contain this.
CANNOT = {}
for _fs in ("ext2", "ext3"):
    for _lay in ("prealloc-full", "prealloc-part"):
        CANNOT[(_fs, _lay)] = "fallocate"       # no fallocate on indirect-mapped files
for _fs in ("ext2", "ext3", "ext4-4k", "ext4-1k", "xfs", "tmpfs", "9p"):
    CANNOT[(_fs, "reflink")] = "FICLONE"
for _lay in ("prealloc-full", "prealloc-part"):
    CANNOT[("9p", _lay)] = "fallocate"          # v9fs has no ->fallocate


def cell_kind(fs, layout):
    if (fs, layout) in NOT_RUN:
        return "not-run"
    if (fs, layout) in CANNOT:
        return "cannot"
    return "run"


# ------------------------------------------------------------ places

@dataclass
class Place:
    build_dir: Path          # where the recipe runs (NFS: the server's side)
    use_dir: Path            # where dm-loop opens the file (NFS: the client's side)
    layout_check: str        # "fiemap", "seek" or "none"


def _mkfs(spec, dev, size):
    fstype = spec.fstype
    if not dmloop.filesystem_available(fstype):
        dmloop.modprobe(dmloop.FS_MODULE[fstype])
    cmd = list(dmloop.MKFS[fstype]) + list(spec.mkfs)
    if size is None:
        if fstype.startswith("ext"):
            # The whole 8 GiB disk (big): few inodes, so that mkfs does not
            # write a 128 MiB inode table under TCG (ext2/ext3 have no lazy init).
            cmd += ["-N", "4096"]
        cmd.append(dev)
    elif fstype == "xfs":
        cmd += ["-d", "size=%d" % size, dev]
    elif fstype == "btrfs":
        cmd += ["-b", str(size), dev]
    else:
        cmd += [dev, "%dk" % (size // KiB)]
    dmloop.run(cmd)


def _mkfs_mount(spec, dev, size):
    _mkfs(spec, dev, size)
    fstype = spec.fstype
    mp = Path(tempfile.mkdtemp(prefix="mx-%s-" % spec.name, dir="/tmp"))
    dmloop.run(["mount", "-t", fstype, dev, str(mp)])
    return mp


@contextlib.contextmanager
def place(fs, layout, disk):
    """A fresh place of filesystem `fs` sized for `layout`, on scratch `disk`."""
    spec = FILESYSTEMS[fs]
    if spec.name == "tmpfs":
        with fm.tmpfs_mount("256m") as mp:
            yield Place(mp, mp, "seek")
        return
    if spec.name == "9p":
        with fm.ninep_dir() as d:
            yield Place(d, d, "none")
        return
    size = None if layout == "big" else spec.small
    if layout == "big" and dmloop.device_size(disk) < 5 * GiB:
        raise NotAvailable("the big layout needs a scratch disk of 5 GiB or more "
                           "(debug/matrix gives 8G)")
    if spec.name == "nfs":
        why = fm.nfs_missing()
        if why:
            raise NotAvailable(why)
        _mkfs(spec, disk, size)
        with NFS_SERVER.serve(disk, spec.fstype) as (server, client):
            yield Place(server, client, "fiemap")
        return
    mp = _mkfs_mount(spec, disk, size)
    try:
        yield Place(mp, mp, "fiemap")
    finally:
        dmloop.umount(mp)
        with contextlib.suppress(OSError):
            os.rmdir(mp)


class NotAvailable(Exception):
    """The place cannot be made in this guest (the reason is the message)."""


class _NfsServer:
    """The guest's kernel nfsd, started once per guest session (atexit stops
    it; filemode_util.nfsd_start/nfsd_stop): it serves NFS_EXPORT.  Each
    NFS cell mounts its fresh filesystem on NFS_EXPORT, flushes nfsd's export cache so that the export resolves
    to it, and mounts the client; after the cell, the reverse.  Starting
    nfsd per cell cost 15-30 s under TCG."""

    def __init__(self):
        self.up = False
        self.mountd = set()

    def start(self):
        if self.up:
            return
        os.makedirs(NFS_EXPORT, exist_ok=True)
        self.up = True
        fm.nfsd_start(NFS_EXPORT, self.mountd)

    def stop(self):
        if not self.up:
            return
        self.up = False
        fm.nfsd_stop(self.mountd)

    @contextlib.contextmanager
    def serve(self, dev, fstype):
        """Mount `dev` on the export, serve it; yields (server side, client side)."""
        self.start()
        dmloop.run(["mount", "-t", fstype, dev, NFS_EXPORT])
        client = Path(tempfile.mkdtemp(prefix="mx-nfs-client-", dir="/tmp"))
        try:
            dmloop.run(["exportfs", "-f"])
            fm.nfs_client_mount(client)
            try:
                yield Path(NFS_EXPORT), client
            finally:
                dmloop.umount(client)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(client)
            dmloop.run(["exportfs", "-f"], check=False)
            try:
                dmloop.umount(NFS_EXPORT)
            except RuntimeError:
                # nfsd still holds the filesystem: stop it (the next cell
                # starts it again), then unmount.
                self.stop()
                dmloop.umount(NFS_EXPORT)


NFS_EXPORT = "/tmp/mx-nfs-export"
NFS_SERVER = _NfsServer()
atexit.register(NFS_SERVER.stop)


# ------------------------------------------------------------ FIEMAP

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000


def fiemap(path):
    """[(logical, physical, length, flags)] of `path` in bytes, after a sync."""
    out, start, count = [], 0, 512
    fd = os.open(str(path), os.O_RDONLY)
    try:
        while True:
            buf = bytearray(struct.pack("=QQIIII", start, (1 << 64) - 1 - start,
                                        FIEMAP_FLAG_SYNC, 0, count, 0) + bytes(56 * count))
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("=I", buf, 20)[0]
            last = False
            for i in range(mapped):
                lo, ph, ln, _, _, fl, _ = struct.unpack_from("=QQQQQII", buf, 32 + 56 * i)
                out.append((lo, ph, ln, fl))
                start = lo + ln
                last = bool(fl & FIEMAP_EXTENT_LAST)
            if not mapped or last:
                return out
    finally:
        os.close(fd)


def _kind(flags):
    if flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE):
        return "other"
    if flags & FIEMAP_EXTENT_UNWRITTEN:
        return layouts.UNWRITTEN
    if flags & FIEMAP_EXTENT_SHARED:
        return layouts.SHARED
    return layouts.DATA


def runs(extents, start=0, end=None):
    """Physical runs over [start, end): extents merged where both the file
    offset and the disk address continue and the kind is the same."""
    out = []
    for lo, ph, ln, fl in extents:
        hi = lo + ln
        if end is not None and lo >= end or hi <= start:
            continue
        k = _kind(fl)
        if out and out[-1][0] + out[-1][2] == lo and out[-1][1] + out[-1][2] == ph \
                and out[-1][3] == k:
            out[-1][2] += ln
        else:
            out.append([lo, ph, ln, k])
    return out


def check_layout(lay, path, how):
    """Check a recipe's statement against the file; returns (runs over the
    file or None, a note).  Raises AssertionError on a mismatch."""
    if how == "none":
        return None, "layout not visible here (no FIEMAP, no SEEK_HOLE)"
    end = -(-lay.size // lay.block) * lay.block
    if how == "seek":
        _check_seek(lay, path, end)
        return None, "checked with SEEK_DATA/SEEK_HOLE (no FIEMAP)"
    ext = [e for e in fiemap(path) if e[0] < end]
    for rs, re_, want in lay.ranges:
        pos = rs
        for lo, _, ln, fl in ext:
            if lo + ln <= rs or lo >= re_:
                continue
            assert want != layouts.HOLE, \
                "%s: bytes [%d, %d) should be a hole, FIEMAP has an extent at %d+%d (flags %#x)" \
                % (lay.name, rs, re_, lo, ln, fl)
            assert lo <= pos, "%s: [%d, %d) not covered by FIEMAP (%s wanted)" % (
                lay.name, pos, min(lo, re_), want)
            assert _kind(fl) == want, "%s: [%d, %d) should be %s, FIEMAP says flags %#x" % (
                lay.name, max(lo, rs), min(lo + ln, re_), want, fl)
            pos = max(pos, lo + ln)
        if want != layouts.HOLE:
            assert pos >= re_, "%s: [%d, %d) not covered by FIEMAP (%s wanted)" % (
                lay.name, pos, re_, want)
    rr = runs(ext, 0, end)
    n = len(rr)
    lo, hi = lay.runs
    assert n >= lo and (hi is None or n <= hi), \
        "%s: FIEMAP shows %d physical runs, the recipe promises %d..%s: the filesystem " \
        "did not build the layout; runs (file block, disk block, blocks): %s" % (
            lay.name, n, lo, "" if hi is None else hi,
            " ".join("%d:%d+%d" % (r[0] // lay.block, r[1] // lay.block, r[2] // lay.block)
                     for r in rr[:12]))
    return n, "checked with FIEMAP"


def _check_seek(lay, path, end):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        for rs, re_, want in lay.ranges:
            if want == layouts.DATA:
                hole = os.lseek(fd, rs, os.SEEK_HOLE)
                assert hole >= min(re_, lay.size), \
                    "%s: [%d, %d) should be data, SEEK_HOLE finds a hole at %d" % (
                        lay.name, rs, re_, hole)
            else:
                try:
                    data = os.lseek(fd, rs, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    data = lay.size
                assert data >= min(re_, lay.size), \
                    "%s: [%d, %d) should not be data, SEEK_DATA finds data at %d" % (
                        lay.name, rs, re_, data)
    finally:
        os.close(fd)
    if any(k == layouts.UNWRITTEN for _, _, k in lay.ranges):
        want = sum(e - s for s, e, k in lay.ranges if k == layouts.UNWRITTEN)
        have = os.stat(path).st_blocks * 512
        assert have >= want, "%s: %d bytes allocated, %d preallocated wanted" % (
            lay.name, have, want)


# ------------------------------------------------------------ expectations

def expected(spec, lay, offset, dev_len):
    """(mode, reason) module/dm-loop.rst promises for this cell: the first
    file block in the device's range that is not plain data, named by what
    it is (hole:, unwritten:, shared: are the layouts' own kinds)."""
    if spec.reason:
        return "file", spec.reason
    first = lay.first_not_data(offset, offset + dev_len)
    if spec.reflink_flag_refuses_bmap and layouts.SHARED in lay.kinds():
        # bmap() gives 0 for every block of the inode: the walk's witness
        # at its first extent refuses it, unless FIEMAP's flags did first.
        start = offset // lay.block
        if first != start:
            return "file", "bmap_mismatch:%d" % start
    if first is None:
        return "block", "-"
    kind = next(k for rs, re_, k in lay.ranges if rs <= first * lay.block < re_)
    # XFS with the pNFS block operations maps holes and unwritten ranges
    # (test_sparse_xfs.py): block mode, counting them in the reason.
    inside = {k for rs, re_, k in lay.ranges if rs < offset + dev_len and re_ > offset}
    if spec.fstype == "xfs" and inside <= {layouts.DATA, layouts.HOLE, layouts.UNWRITTEN} \
            and sparse_block_mode("xfs"):
        return "block", SPARSE_REASON
    return "file", "%s:%d" % (kind, first)


# The reason of a block-mode table with holes or unwritten ranges (a regex).
SPARSE_REASON = r"holes:\d+/unwritten:\d+"


# ------------------------------------------------------------ results

@dataclass
class Row:
    fs: str
    layout: str
    offset_blocks: str = "-"
    offset: str = "-"
    dev_bytes: str = "-"
    expect: str = "-"
    mode: str = "-"
    reason: str = "-"
    fiemap_runs: str = "-"
    dm_extents: str = "-"
    splits: str = "-"
    layout_check: str = "-"
    read: str = "-"
    verify: str = "-"
    compare: str = "-"
    after: str = "-"
    seconds: str = "-"
    result: str = "-"
    note: str = ""
    phases: str = ""
    kernel: str = field(default_factory=lambda: os.uname().release)

    def phase(self, name, t0):
        """Note the seconds since t0 under `name`; returns now."""
        now = time.monotonic()
        self.phases += "%s%s %.1f" % (", " if self.phases else "", name, now - t0)
        return now


RESULTS = []


def report_paths(base):
    return Path(str(base) + ".md"), Path(str(base) + ".csv")


def write_report(rows, base, title):
    """Markdown (a grid, then one line per cell) and CSV of `rows`."""
    md, csvp = report_paths(base)
    md.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Row)]
    with open(csvp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for r in rows:
            w.writerow([getattr(r, n) for n in names])
    md.write_text(markdown(rows, title))
    return md, csvp


def _grid_cell(rs):
    """Mode (and reason), extents, results and time of a (fs, layout) pair."""
    if not rs:
        return ""
    r0 = rs[0]
    if r0.result in ("cannot exist", "not run", "not available"):
        return r0.result
    modes = []
    for r in rs:
        m = r.mode if r.mode != "file" else "file %s" % r.reason
        if m not in modes:
            modes.append(m)
    ext = sorted({int(x) for r in rs for x in (r.dm_extents if r.mode == "block"
                                                 else r.fiemap_runs,) if x.isdigit()})
    parts = [" / ".join(modes)]
    if ext:
        parts.append("%s ext" % (ext[0] if len(ext) == 1 else "%d-%d" % (ext[0], ext[-1])))
    fails = [r.offset_blocks for r in rs if r.result != "pass"]
    ran = ",".join(r.offset_blocks for r in rs)
    parts.append("ok at %s" % ran if not fails else "**FAIL** at %s (of %s)" % (
        ",".join(fails), ran))
    secs = sum(float(r.seconds) for r in rs if r.seconds != "-")
    parts.append("%.0f s" % secs)
    return ", ".join(parts)


def markdown(rows, title):
    out = io.StringIO()
    out.write("# %s\n\n" % title)
    out.write("Kernel %s.  Offsets are in filesystem blocks (big-tail: past 4 GiB).  "
              "Grid: mode (file: reason), extents (block: the table's; file: FIEMAP runs), "
              "result and time over the offsets.  `verify`: fio crc32c random writes "
              "verified through the device; "
              "`after`: the file holds exactly the device's data at the offset "
              "after removal; `compare`: `dmloop-inspect compare` (0 = agrees).\n\n"
              % (", ".join(sorted({r.kernel for r in rows if r.kernel})) or "unknown"))
    fss = [f for f in FS_NAMES if any(r.fs == f for r in rows)]
    lays = [lay for lay in LAYOUTS if any(r.layout == lay for r in rows)]
    out.write("| | %s |\n|---|%s\n" % (" | ".join(lays), "---|" * len(lays)))
    for f in fss:
        out.write("| **%s** | %s |\n" % (f, " | ".join(
            _grid_cell([r for r in rows if r.fs == f and r.layout == lay]) for lay in lays)))
    out.write("\n| filesystem | layout | offset | mode | reason | extents (FIEMAP / table) "
              "| splits | read | verify | compare | after | time | result |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        res = r.result if not r.note else "%s: %s" % (r.result, r.note)
        out.write("| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s | %s | %s | %s |\n" % (
            r.fs, r.layout, r.offset_blocks, r.mode, r.reason, r.fiemap_runs, r.dm_extents,
            r.splits, r.read, r.verify, r.compare, r.after,
            r.seconds if r.seconds == "-" else r.seconds + " s", res.replace("|", "/")))
    return out.getvalue()


def text_table(rows):
    """The per-cell table as fixed-width text, for the terminal."""
    cols = ["fs", "layout", "offset_blocks", "mode", "reason", "fiemap_runs", "dm_extents",
            "verify", "compare", "after", "seconds", "result"]
    heads = ["filesystem", "layout", "off", "mode", "reason", "runs", "table", "verify",
             "compare", "after", "s", "result"]
    data = [[str(getattr(r, c)) for c in cols] for r in rows]
    for r, d in zip(rows, data):
        if r.note and r.result != "pass":
            d[-1] = "%s: %s" % (r.result, r.note)
    width = [max([len(h)] + [len(d[i]) for d in data]) for i, h in enumerate(heads)]
    width[-1] = 0
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, width)).rstrip()]
    for d in data:
        lines.append("  ".join(x.ljust(w) for x, w in zip(d, width)).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------ one cell

SMALL = 64 * MiB       # ranges up to this are read and compared whole


def _status(name):
    f = dmloop.status(name).split()
    return {"mode": f[3], "extents": int(f[4]), "splits": int(f[8]), "reason": f[9]}


def _ensure_debugfs():
    if not os.path.isdir("/sys/kernel/debug/dm-loop"):
        if not dmloop.is_mounted("/sys/kernel/debug"):
            dmloop.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"], check=False)


def _sample_ranges(start, length, lay=None):
    """Ranges of a big device compared instead of the whole: first and last
    MiB, the MiB on each side of every 4 GiB line of the file, four more,
    and (big) every range the recipe marked with the pattern."""
    picks = {0, max(0, length - MiB)}
    for k in range(1, 4):
        line = k * 4 * GiB - start
        if 0 < line < length:
            picks |= {max(0, line - MiB), line}
    for i in range(1, 5):
        picks.add(length * i // 5 // MiB * MiB)
    out = [(p, min(MiB, length - p)) for p in picks if p < length]
    if lay is not None and lay.name == "big":
        for s, e in layouts.big_marks(lay.size):
            lo, hi = max(s - start, 0), min(e - start, length)
            if lo < hi:
                out.append((lo, hi - lo))
    return _merge(out)


class FileState:
    """The layout a recipe built plus what the cells wrote since."""

    def __init__(self, lay, path):
        self.lay, self.path = lay, path
        self.writes = []        # [(file offset, bytes)]

    def content(self, offset, length):
        buf = bytearray(self.lay.content(offset, length))
        end = offset + len(buf)
        for wo, data in self.writes:
            lo, hi = max(wo, offset), min(wo + len(data), end)
            if lo < hi:
                buf[lo - offset:hi - offset] = data[lo - wo:hi - wo]
        return bytes(buf)


FIO_IO_SIZE = 256 * KiB   # fio writes 64 random 4 KiB blocks per cell, over the whole device


def fio_randwrite_verify(dev, size, seed, iolog):
    """fio random 4 KiB writes (FIO_IO_SIZE in all) over [0, size) of `dev`,
    then crc32c verify;
    returns (ok, message, [(offset, length)] written)."""
    io_size = min(size, FIO_IO_SIZE)
    cmd = ["fio", "--name=matrix", "--filename=%s" % dev, "--rw=randwrite", "--bs=4k",
           "--direct=1", "--ioengine=libaio", "--iodepth=8", "--size=%d" % size,
           "--io_size=%d" % io_size, "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
           "--randseed=%d" % seed, "--write_iolog=%s" % iolog, "--output-format=terse",
           "--terse-version=3"]
    p = dmloop.run(cmd, check=False, timeout=1800)
    written = []
    with contextlib.suppress(OSError):
        for line in open(iolog):
            parts = line.split()
            if len(parts) >= 4 and parts[-3] == "write":
                written.append((int(parts[-2]), int(parts[-1])))
    msg = "" if p.returncode == 0 else "fio exit %d: %s" % (
        p.returncode, (p.stderr.strip() or p.stdout.strip())[-400:])
    return p.returncode == 0, msg, written


def _merge(ranges):
    out = []
    for s, n in sorted(ranges):
        if out and s <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], s + n - out[-1][0])
        else:
            out.append([s, n])
    return [tuple(r) for r in out]


def _first_diff(a, b):
    n = min(len(a), len(b))
    i = next((i for i in range(0, n, 4096) if a[i:i + 4096] != b[i:i + 4096]), None)
    if i is None:
        return n if len(a) != len(b) else None
    return i + next(j for j in range(4096) if a[i + j] != b[i + j])


def _compare(label, got, want, at):
    if got != want:
        d = _first_diff(got, want)
        raise AssertionError("%s: differs at file offset %d (%s bytes read, %d expected)"
                             % (label, at + (d or 0), len(got), len(want)))


def run_offset(spec, state, place_, offset_blocks, row, seed):
    """One device over `state`'s file at `offset_blocks` (from the layout's
    base); fills `row`, raises AssertionError on the first broken promise."""
    lay = state.lay
    path = place_.use_dir / lay.path.name
    blk = lay.block
    offset = lay.base + offset_blocks * blk
    dev_len = (lay.size - offset) // 512 * 512
    row.offset_blocks, row.offset, row.dev_bytes = str(offset_blocks), str(offset), str(dev_len)
    exp_mode, exp_reason = expected(spec, lay, offset, dev_len)
    row.expect = exp_mode if exp_mode == "block" else "file %s" % exp_reason

    runs_in_range = None
    if place_.layout_check == "fiemap":
        ext = fiemap(place_.build_dir / lay.path.name)
        runs_in_range = len(runs(ext, offset, offset + dev_len))

    t = time.monotonic()
    before = state.content(max(0, offset - MiB), min(offset, MiB))
    after_end = offset + dev_len
    after = state.content(after_end, min(MiB, lay.size - after_end))

    dev = dmloop.create(DEV, "0 %d loop %s %d" % (dev_len // 512, path, offset))
    removed = False
    try:
        st = _status(DEV)
        row.mode, row.reason = st["mode"], st["reason"]
        row.dm_extents = str(st["extents"]) if st["mode"] == "block" else "-"
        assert st["mode"] == exp_mode and (
            re.fullmatch(exp_reason, st["reason"]) if exp_reason == SPARSE_REASON
            else st["reason"] == exp_reason), \
            "mode %s reason %s, expected %s %s" % (st["mode"], st["reason"], exp_mode, exp_reason)
        if st["mode"] == "block" and runs_in_range is not None and exp_reason != SPARSE_REASON:
            assert st["extents"] == runs_in_range, \
                "the table has %d extents, FIEMAP shows %d runs over the device's range" % (
                    st["extents"], runs_in_range)

        t = row.phase("create", t)
        _ensure_debugfs()
        p = dmloop.run([str(INSPECT), "compare", DEV], check=False)
        t = row.phase("compare", t)
        row.compare = "0" if p.returncode == 0 else "exit %d" % p.returncode
        compare_msg = (p.stdout + p.stderr).strip().splitlines()[-1:] if p.returncode else []

        # Reads: the device shows the file's bytes at the offset.
        if dev_len <= SMALL:
            ranges = [(0, dev_len)]
        else:
            ranges = _sample_ranges(offset, dev_len, lay)
        for s, n in ranges:
            _compare("read through the device", dmloop.read_bytes(dev, n, s, direct=True),
                     state.content(offset + s, n), offset + s)
        row.read = "ok" if dev_len <= SMALL else "ok (%d MiB sampled)" % (
            sum(n for _, n in ranges) >> 20)
        t = row.phase("read", t)

        # Writes: fio, then the sectors past its last whole 4 KiB.
        iolog = "/tmp/mx-fio-%d.log" % os.getpid()
        fio_size = dev_len // 4096 * 4096
        ok, msg, written = fio_randwrite_verify(dev, fio_size, seed, iolog)
        row.verify = "ok" if ok else "FAIL"
        t = row.phase("fio", t)
        assert ok, msg
        assert written, "fio logged no writes (%s)" % iolog
        if dev_len > fio_size:
            tail = layouts.pattern(seed, offset + fio_size, dev_len - fio_size)
            dmloop.write_bytes(dev, tail, fio_size, direct=True)
            _compare("tail written through the device",
                     dmloop.read_bytes(dev, len(tail), fio_size, direct=True), tail,
                     offset + fio_size)
            written.append((fio_size, dev_len - fio_size))
        row.splits = str(_status(DEV)["splits"])

        # What the device holds where it was written, before removal.
        if dev_len <= SMALL:
            # One read of the whole device, sliced: the written ranges to
            # carry over, and everything else must still be what it was.
            whole = dmloop.read_bytes(dev, dev_len, 0, direct=True)
            snap = [(s, whole[s:s + n]) for s, n in _merge(written)]
            want = bytearray(state.content(offset, dev_len))
            for s, data in snap:
                want[s:s + len(data)] = data
            _compare("the device's unwritten ranges before removal", whole, bytes(want), offset)
            del whole, want
        else:
            snap = [(s, dmloop.read_bytes(dev, n, s, direct=True)) for s, n in _merge(written)]
        dmloop.remove(DEV)
        removed = True
        t = row.phase("remove", t)
    finally:
        if not removed and dmloop.exists(DEV):
            dmloop.remove(DEV)

    for s, data in snap:
        state.writes.append((offset + s, data))

    # After removal: the file holds exactly the device's data at the offset,
    # and the bytes around it are untouched.
    dmloop.drop_caches()
    assert os.stat(path).st_size == lay.size, "file size changed: %d, was %d" % (
        os.stat(path).st_size, lay.size)
    if dev_len <= SMALL:
        check = [(0, dev_len)]
    else:
        check = _merge(ranges + [(s, len(d)) for s, d in snap])
    for s, n in check:
        _compare("the file after removal", dmloop.read_bytes(path, n, offset + s),
                 state.content(offset + s, n), offset + s)
    if before:
        _compare("the bytes before the offset", dmloop.read_bytes(path, len(before),
                 offset - len(before)), before, offset - len(before))
    if after:
        _compare("the bytes after the device", dmloop.read_bytes(path, len(after), after_end),
                 after, after_end)
    row.after = "ok" if dev_len <= SMALL else "ok (%d MiB checked)" % (
        sum(n for _, n in check) >> 20)
    row.phase("after", t)
    # Last, so that a compare failure still leaves the other results in the row.
    if row.compare != "0":
        raise AssertionError("dmloop-inspect compare: %s%s" % (
            row.compare, (": " + compare_msg[0]) if compare_msg else ""))


def _remove_files(lay, d):
    for f in [lay.path] + list(lay.extra_files):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(d) / Path(f).name)
    os.sync()


def _reuse_or_rebuild(fs, layout, pl, state, prev_mode, k, row, t):
    """Before the next offset: the file the previous offset used, if FIEMAP
    (or SEEK_HOLE) shows it still is what its recipe stated; else (file
    mode wrote into its holes or unwritten or shared ranges: allowed) the
    recipe again, under a new name, in the same filesystem.  A block-mode
    device must have left the layout as it was (but one over holes and
    unwritten ranges, "block-sparse", which fills them): that is asserted,
    not rebuilt around.  Returns (state, FIEMAP runs or None, note)."""
    lay = state.lay
    build_path = pl.build_dir / lay.path.name
    why = None
    if pl.layout_check == "none":
        if set(lay.kinds()) != {layouts.DATA}:
            why = "layout not visible here: built again"
        else:
            n, note = check_layout(lay, build_path, pl.layout_check)
    else:
        try:
            n, note = check_layout(lay, build_path, pl.layout_check)
        except AssertionError as e:
            if prev_mode == "block":
                raise AssertionError("the block-mode device changed the file's layout: %s" % e)
            why = "built again (writes into holes changed the layout: %s)" % (
                str(e).split(":")[1].strip()[:60] if ":" in str(e) else e)
    if why is None:
        row.phase("recheck", t)
        return state, n, note + ", reused from the previous offset"
    _remove_files(lay, pl.build_dir)
    t = row.phase("recheck", t)
    lay = layouts.build(layout, pl.build_dir, name="img-%d" % k)
    t = row.phase("recipe", t)
    n, note = check_layout(lay, pl.build_dir / lay.path.name, pl.layout_check)
    row.phase("layout", t)
    return FileState(lay, pl.use_dir / lay.path.name), n, "%s; %s" % (note, why)


def run_cell(fs, layout, offsets, disk):
    """Run (fs, layout) at `offsets` (blocks); returns the Rows (one per
    offset, or one for a cell that cannot exist) and the failures.

    One filesystem and one file serve all the offsets: each later offset
    first checks the file against its recipe's statement again
    (_reuse_or_rebuild) and builds it again where file-mode writes changed
    it; after a failure the next offset starts from a fresh filesystem."""
    spec = FILESYSTEMS[fs]
    kind = cell_kind(fs, layout)
    rows, failures = [], []
    if kind == "not-run":
        r = Row(fs, layout, result="not run", note=NOT_RUN[(fs, layout)])
        RESULTS.append(r)
        return [r], failures
    stack = contextlib.ExitStack()
    state = pl = None
    prev_mode = None
    try:
        for k in offsets:
            row = Row(fs, layout, offset_blocks=str(k))
            RESULTS.append(row)
            rows.append(row)
            t0 = time.monotonic()
            try:
                if state is not None:
                    try:
                        state, n, note = _reuse_or_rebuild(fs, layout, pl, state, prev_mode, k,
                                                           row, t0)
                    except layouts.RecipeFailed:
                        state = None    # no room to build it again (fillers): a fresh filesystem
                        t0 = row.phase("rebuild-failed", t0)
                if state is None:
                    stack.close()
                    stack = contextlib.ExitStack()
                    pl = stack.enter_context(place(fs, layout, disk))
                    t = row.phase("mkfs", t0)
                    try:
                        lay = layouts.build(layout, pl.build_dir)
                        t = row.phase("recipe", t)
                    except CannotExist as e:
                        want = CANNOT.get((fs, layout))
                        row.offset_blocks = "-"
                        if want is None:
                            raise AssertionError("the recipe says this cell cannot exist (%s), "
                                                 "the matrix expects it to" % e)
                        assert want in str(e), "cannot exist, but not for the expected " \
                                               "reason (%s): %s" % (want, e)
                        row.result, row.note = "cannot exist", str(e)
                        return rows, failures
                    if kind == "cannot":
                        raise AssertionError("the matrix says this cell cannot exist (%s), but "
                                             "the recipe built it: update the matrix"
                                             % CANNOT[(fs, layout)])
                    state = FileState(lay, pl.use_dir / lay.path.name)
                    n, note = check_layout(lay, pl.build_dir / lay.path.name, pl.layout_check)
                    row.phase("layout", t)
                row.fiemap_runs = "-" if n is None else str(n)
                row.layout_check = note
                prev_mode = None
                run_offset(spec, state, pl, k, row, seed=1000 + 10 * LAYOUTS.index(layout) + k)
                prev_mode = row.mode
                if row.mode == "block" and row.reason not in ("-", ""):
                    prev_mode = "block-sparse"
                row.result = "pass"
            except NotAvailable as e:
                row.result, row.note = "not available", str(e)
                return rows, failures
            except Exception as e:
                row.result = "FAIL"
                row.note = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                failures.append("%s/%s offset %s: %s" % (fs, layout, k, e))
                state = None
            finally:
                row.seconds = "%.1f" % (time.monotonic() - t0)
    finally:
        stack.close()
    return rows, failures


def read_csv(path):
    """The Rows of a CSV written by write_report (columns it lacks: defaults)."""
    names = {f.name for f in fields(Row)}
    with open(path, newline="") as f:
        # No kernel column: unknown (not this machine's kernel).
        return [Row(**dict({"kernel": ""}, **{k: v for k, v in r.items() if k in names}))
                for r in csv.DictReader(f)]


def merge(base, title, paths):
    """One report from the CSVs of several runs of the matrix (debug/matrix
    runs two guests, one from each end of the cell list): each cell once,
    a finished result over an unfinished one, in the matrix's order."""
    best = {}
    order = {(f, lay): i for i, (f, lay) in enumerate((f, lay) for f in FS_NAMES for lay in LAYOUTS)}
    for p in paths:
        if not os.path.exists(p):
            continue
        for r in read_csv(p):
            key = (r.fs, r.layout, r.offset_blocks)
            if key not in best or best[key].result in ("-", "") and r.result not in ("-", ""):
                best[key] = r
    kernels = {r.kernel for r in best.values() if r.kernel}
    rows = sorted(best.values(), key=lambda r: (order.get((r.fs, r.layout), 1 << 30),
                                                int(r.offset_blocks) if r.offset_blocks.isdigit()
                                                else -1))
    for r in rows:
        if not r.kernel and len(kernels) == 1:
            r.kernel = next(iter(kernels))
    return write_report(rows, base, title), rows


if __name__ == "__main__":
    # matrix_util.py merge <output base> <title> <csv>...: on the host, after debug/matrix.
    if len(sys.argv) < 5 or sys.argv[1] != "merge":
        sys.exit("usage: matrix_util.py merge <output base> <title> <csv>...")
    (md, csvp), rows = merge(sys.argv[2], sys.argv[3], sys.argv[4:])
    print(text_table(rows))
    print("written to %s and %s" % (md, csvp))
