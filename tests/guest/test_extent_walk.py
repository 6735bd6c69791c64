"""Block mode's extent table from FIEMAP, and the mode decided before the
pin (issue 19, build/spec19.md).

- the table of a block-mode device is the file's FIEMAP (contiguous runs
  coalesced) whatever the extent count: across the walk's batches of 1024
  extents (1023, 1024, 1025, 2049), past 50,000, and on 1 KiB blocks whose
  extents do not start on a page; `walk: fiemap` in the target's info;
- what FIEMAP flags is never mapped, and the reason names the first such
  file block: an unwritten extent in the middle of a written file
  (`unwritten:`, ext4 and XFS), a reflinked XFS file after a full unshare
  (`bmap_mismatch:`/`shared:` or an honest block-mode table); data written
  and not yet synced (delayed allocation) is synced and mapped; an
  inline-data file gets file mode before any walk;
- bmap_walk=Y brings back the per-block bmap() walk (`walk: bmap`, the
  same table, `unmapped:` for a hole);
- a file that ends in file mode is never pinned on the way there: another
  process writing it never sees ETXTBSY while tables over it are created
  and reloaded.

Files with thousands of extents are laid out offline (fixture `frag1k`,
test_more_than_50000_extents): debugfs marks every other free block of a
fresh 1 KiB-block ext4 in use, fallocates the files into the blocks left
between, frees the marked blocks again, and the extents' "unwritten" bit is
cleared on disk (no metadata_csum, so no checksum to redo).  Building them
through the kernel costs one system call per extent: about 20 times as
long under TCG.
"""

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import dmloop
from reliability_util import DmControl, module_figures_back_to_zero  # noqa: F401 (autouse)
from safety_util import (
    DEBUGFS, FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED, FIEMAP_EXTENT_UNWRITTEN, PARAMS,
    UNMAPPED_MSG, MiB, assert_refused, block_size, debugfs_info, fallocate, fiemap,
    sparse_block_mode, status_fields, table, write_probe)

KiB = 1 << 10
SECTOR = 512
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_MERGED = 0x1000
FALLOC_FL_UNSHARE_RANGE = 0x40
BMAP_WALK = PARAMS / "bmap_walk"
WALK_BATCH = 1024               # LOOP_FIEMAP_BATCH in module/dm-loop-block.c


# ------------------------------------------------------------ tables

def kernel_table(name):
    """The live table's extents from debugfs: [(dev_sector, sectors, host_sector)]."""
    minor = os.minor(os.stat("/dev/mapper/" + name).st_rdev)
    insts = sorted(DEBUGFS.glob("dm-%d-0-*" % minor), key=lambda p: int(p.name.split("-")[-1]))
    assert insts, "no debugfs instance of %s (dm-%d)" % (name, minor)
    lines = (insts[0] / "extents").read_text().splitlines()
    return [tuple(int(x) for x in line.split()[1:]) for line in lines
            if line.strip() and not line.startswith("#")]


def fiemap_table(path, size, offset=0):
    """What block mode's table over [offset, offset+size) of `path` must be:
    its FIEMAP extents in sectors (dev_sector, sectors, host_sector),
    physically contiguous neighbours coalesced.  Every extent in the range
    must be plain data and the range covered without a gap."""
    out = []
    end = offset + size
    for e in fiemap(path, batch=WALK_BATCH):
        if e.logical + e.length <= offset:
            continue
        if e.logical >= end:
            break
        assert not e.flags & ~(FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED), \
            "%s: extent at %d+%d has flags %#x: not plain data" % (path, e.logical, e.length, e.flags)
        lo, hi = max(e.logical, offset), min(e.logical + e.length, end)
        dev, n, host = (lo - offset) // SECTOR, (hi - lo) // SECTOR, (e.physical + lo - e.logical) // SECTOR
        if out and out[-1][0] + out[-1][1] == dev and out[-1][2] + out[-1][1] == host:
            out[-1] = (out[-1][0], out[-1][1] + n, out[-1][2])
        else:
            assert dev == (out[-1][0] + out[-1][1] if out else 0), \
                "%s: FIEMAP leaves a gap before file byte %d" % (path, lo)
            out.append((dev, n, host))
    assert out and out[-1][0] + out[-1][1] == size // SECTOR, \
        "%s: FIEMAP does not cover [%d, %d)" % (path, offset, end)
    return out


def fiemap_nosync(path):
    """[(logical, length, flags)] of `path` without FIEMAP_FLAG_SYNC: what the
    filesystem says before writeback (delayed allocation shows)."""
    import fcntl
    fd = os.open(str(path), os.O_RDONLY)
    try:
        buf = bytearray(32 + 56 * 64)
        struct.pack_into("QQIIII", buf, 0, 0, (1 << 64) - 1, 0, 0, 64, 0)
        fcntl.ioctl(fd, 0xc020660b, buf)
        n = struct.unpack_from("I", buf, 20)[0]
        out = []
        for i in range(n):
            logical, _, length, _, _, flags = struct.unpack_from("QQQQQI", buf, 32 + 56 * i)
            out.append((logical, length, flags))
        return out
    finally:
        os.close(fd)


def assert_block_table(name, path, size, walk="fiemap"):
    """`name` is in block mode over `path` with FIEMAP's table, built by `walk`."""
    st = status_fields(name)
    assert (st["mode"], st["reason"]) == ("block", "-"), st
    want = fiemap_table(path, size)
    have = kernel_table(name)
    if have != want:
        diff = next(i for i, (a, b) in enumerate(zip(have + [None] * len(want), want + [None] * len(have)))
                    if a != b)
        raise AssertionError("%s: kernel table (%d extents) differs from FIEMAP (%d) first at "
                             "entry %d: kernel %s, FIEMAP %s" % (
                                 name, len(have), len(want), diff,
                                 have[diff] if diff < len(have) else None,
                                 want[diff] if diff < len(want) else None))
    assert st["extents"] == len(want), st
    info = debugfs_info(name)
    assert info.get("walk") == walk, "debugfs info says walk %r, want %r: %s" % (
        info.get("walk"), walk, info)
    return want


def file_mode_reason(name):
    st = status_fields(name)
    assert st["mode"] == "file", st
    return st["reason"]


# ------------------------------------------------------------ filesystems

@pytest.fixture(scope="module")
def ext4():
    """ext4 (4 KiB blocks) on the first scratch disk, shared by the tests below."""
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(0),
                           mkfs_args=("-b", "4096", "-E", "nodiscard")) as mp:
        yield mp


@pytest.fixture(scope="module")
def xfs():
    """XFS (reflink on: mkfs.xfs's default) on the second scratch disk, shared."""
    with dmloop.mounted_fs("xfs", dev=dmloop.scratch_disk(1), mkfs_args=("-K",)) as mp:
        yield mp


# ------------------------------------------------------------ offline layouts

def _dumpe2fs(dev):
    return dmloop.run(["dumpe2fs", dev]).stdout


def _free_ranges(text):
    """The free block ranges of a dumpe2fs listing, neighbours across a group
    boundary merged: [(first, last)]."""
    ranges = []
    for line in text.splitlines():
        if not line.startswith("  Free blocks: "):
            continue
        for r in line.split(":", 1)[1].split(","):
            r = r.strip()
            if r:
                a, _, b = r.partition("-")
                a, b = int(a), int(b or a)
                if ranges and ranges[-1][1] + 1 == a:
                    ranges[-1] = (ranges[-1][0], b)
                else:
                    ranges.append((a, b))
    return ranges


def _gap_runs(ranges, regions):
    """Blocks to mark in use so that the free space left, from the start,
    comes in `run`-block pieces `gap` blocks apart: regions [(keep, run, gap)]
    one after the other, each until `keep` blocks are left free in it.
    Returns [(first, count)]."""
    out = []
    blocks = (b for lo, hi in ranges for b in range(lo, hi + 1))
    for keep, run, gap in regions:
        kept = phase = 0
        while kept < keep:
            b = next(blocks)
            if phase < run:
                kept += 1
            elif out and out[-1][0] + out[-1][1] == b:
                out[-1][1] += 1
            else:
                out.append([b, 1])
            phase = (phase + 1) % (run + gap)
    return out


def _field(text, key):
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith(key + ":"))


def _inode_table(text, group):
    seen = None
    for line in text.splitlines():
        words = line.split()
        if line.startswith("Group ") and words[1].rstrip(":").isdigit():
            seen = int(words[1].rstrip(":"))
        elif seen == group and line.strip().startswith("Inode table at "):
            return int(line.split(" at ")[1].split("-")[0])
    raise LookupError("no inode table of group %d in the dumpe2fs listing" % group)


_EH = struct.Struct("<HHHHI")       # struct ext4_extent_header


def _mark_initialized(dev, text, ino):
    """Clear the "unwritten" bit (ee_len > 32768) of every extent of inode
    `ino` on the unmounted `dev`, walking the extent tree from the inode's
    i_block.  Needs a filesystem without metadata_csum.  Returns how many
    extents changed."""
    bs = int(_field(text, "Block size"))
    isz = int(_field(text, "Inode size"))
    ipg = int(_field(text, "Inodes per group"))
    group, index = divmod(ino - 1, ipg)
    where = _inode_table(text, group) * bs + index * isz
    changed = 0
    fd = os.open(dev, os.O_RDWR)

    def walk(buf, off):
        nonlocal changed
        magic, entries, _, depth, _ = _EH.unpack_from(buf, off)
        assert magic == 0xF30A, "inode %d: bad extent header magic %#x" % (ino, magic)
        dirty = False
        for i in range(entries):
            p = off + 12 + 12 * i
            if depth:
                _, lo, hi = struct.unpack_from("<IIH", buf, p)
                blk = (hi << 32) | lo
                child = bytearray(os.pread(fd, bs, blk * bs))
                if walk(child, 0):
                    os.pwrite(fd, child, blk * bs)
            else:
                ln = struct.unpack_from("<H", buf, p + 4)[0]
                if ln > 32768:
                    struct.pack_into("<H", buf, p + 4, ln - 32768)
                    dirty = True
                    changed += 1
        return dirty

    try:
        raw = bytearray(os.pread(fd, isz, where))
        if walk(raw, 40):                       # i_block
            os.pwrite(fd, raw, where)
        os.fsync(fd)
    finally:
        os.close(fd)
    return changed


@contextlib.contextmanager
def laid_out_ext4_1k(dev, files, regions):
    """A fresh ext4 with 1 KiB blocks (no metadata_csum) on `dev` holding
    `files` [(name, blocks)], created in that order, each allocated by
    debugfs's fallocate into the free space that _gap_runs(`regions`) leaves
    (so with regions [(n, 1, 1)] every block of the first n is an extent of
    its own), then turned into written extents; the content is whatever the
    disk held.  Yields the mount point; unmounted at the end."""
    dmloop.run(["mkfs.ext4", "-F", "-q", "-b", "1024", "-O", "^metadata_csum",
                "-E", "nodiscard", dev])
    text = _dumpe2fs(dev)
    gaps = _gap_runs(_free_ranges(text), regions)
    with tempfile.TemporaryDirectory(prefix="dmloop-layout-") as tmp:
        empty = Path(tmp) / "empty"
        empty.touch()
        cmds = ["setb %d %d" % (b, n) for b, n in gaps]
        for name, blocks in files:
            cmds += ["write %s %s" % (empty, name), "fallocate %s 0 %d" % (name, blocks - 1),
                     "sif %s size %d" % (name, blocks * KiB)]
        cmds += ["freeb %d %d" % (b, n) for b, n in gaps]
        script = Path(tmp) / "script"
        script.write_text("\n".join(cmds) + "\n")
        p = dmloop.run(["debugfs", "-w", "-f", str(script), dev])
        assert "rror" not in p.stderr, p.stderr[-2000:]
    first_ino = 12                  # the first inode after lost+found on a fresh ext4
    for i, (name, blocks) in enumerate(files):
        assert _mark_initialized(dev, text, first_ino + i) > 0, name
    mp = Path(tempfile.mkdtemp(prefix="dmloop-layout-", dir="/tmp"))
    dmloop.run(["mount", "-t", "ext4", dev, str(mp)])
    try:
        for i, (name, blocks) in enumerate(files):
            st = os.stat(mp / name)
            assert (st.st_ino, st.st_size) == (first_ino + i, blocks * KiB), (name, st)
        yield mp
    finally:
        dmloop.umount(mp)
        os.rmdir(mp)


COUNTS = (WALK_BATCH - 1, WALK_BATCH, WALK_BATCH + 1, 2 * WALK_BATCH + 1)
ODD_BLOCKS = 600                 # test_unaligned_extents_on_1k_blocks: runs of 3 blocks


@pytest.fixture(scope="module")
def frag1k():
    """ext4 with 1 KiB blocks on the third scratch disk: files c<N> of N
    blocks, each block an extent of its own, for N in COUNTS; and `odd`,
    600 blocks in runs of 3 blocks 2 blocks apart (extents that start and
    end inside a page)."""
    files = [("c%d" % n, n) for n in COUNTS] + [("odd", ODD_BLOCKS)]
    single = sum(COUNTS)
    regions = [(single + single // 20 + 64, 1, 1), (ODD_BLOCKS + 64, 3, 2)]
    with laid_out_ext4_1k(dmloop.scratch_disk(2), files, regions) as mp:
        for n in COUNTS:
            ext = fiemap(mp / ("c%d" % n), batch=WALK_BATCH)
            assert len(ext) == n and all(e.length == KiB for e in ext), \
                "c%d: the layout gave %d extents, not one per block" % (n, len(ext))
        yield mp


# ------------------------------------------------------------ unwritten, delalloc, inline

@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_unwritten_extent_in_the_middle(request, fstype):
    """A 4 MiB file fallocated, then written but for its second MiB: file
    mode naming the first unwritten block (`unwritten:<1 MiB in blocks>`);
    through the device the written parts read back and the unwritten MiB
    reads zeros, and a write into it lands in the file; require_block is
    refused with the hole/unwritten/shared error and its own log line, and
    leaves the file unpinned."""
    mp = request.getfixturevalue(fstype)
    img = mp / "unwritten"
    size = 4 * MiB
    fd = os.open(img, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    a = dmloop.random_bytes(MiB, 1)
    b = dmloop.random_bytes(2 * MiB, 2)
    dmloop.write_bytes(img, a, offset=0, fsync=True)
    dmloop.write_bytes(img, b, offset=2 * MiB, fsync=True)
    ext = fiemap(img)
    unwritten = [(e.logical, e.length) for e in ext if e.flags & FIEMAP_EXTENT_UNWRITTEN]
    assert unwritten == [(MiB, MiB)], "the file should be unwritten in [1, 2) MiB only: %s" % ext
    first = MiB // block_size(mp)
    sparse = sparse_block_mode(fstype)
    with contextlib.ExitStack() as stack:
        dev = dmloop.create("uw", table(img, size))
        stack.callback(dmloop.remove, "uw")
        if sparse:      # XFS: block mode over the unwritten MiB (test_sparse_xfs.py)
            st = status_fields("uw")
            assert (st["mode"], st["reason"]) == ("block", "holes:0/unwritten:1"), st
        else:
            assert file_mode_reason("uw") == "unwritten:%d" % first
        assert dmloop.read_bytes(dev, size, direct=True) == a + bytes(MiB) + b
        c = dmloop.random_bytes(64 * KiB, 3)
        dmloop.write_bytes(dev, c, offset=MiB + 4 * KiB, direct=True, fsync=True)
        assert dmloop.read_bytes(dev, 64 * KiB, MiB + 4 * KiB, direct=True) == c
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, 64 * KiB, MiB + 4 * KiB) == c
    if sparse:
        return
    # The device's write converted [1 MiB + 4 KiB, +64 KiB): block `first`
    # is still unwritten.
    lines = assert_refused("uw", table(img, size, opts=("require_block",)), UNMAPPED_MSG, "EINVAL")
    assert any("%s: block mode required, not possible: unwritten:%d" % (img, first) in line
               for line in lines), lines
    assert write_probe(img) is None, "a refused require_block table left the file pinned"


def test_delalloc_data_is_synced_and_mapped(ext4):
    """8 MiB written (buffered, no fsync) and the table loaded at once, while
    ext4 still has the data as delayed allocation: block mode; the walk
    synced the file, the table is the FIEMAP of the written file, and the
    data reads back through the device."""
    img = ext4 / "delalloc"
    size = 8 * MiB
    data = dmloop.random_bytes(size, 4)
    dmloop.write_bytes(img, data)
    before = fiemap_nosync(img)
    assert any(fl & FIEMAP_EXTENT_DELALLOC for _, _, fl in before), \
        "the data is already allocated: the test proves nothing (%s)" % before
    dmloop.create("da", table(img, size))
    try:
        assert_block_table("da", img, size)
        assert dmloop.read_bytes("/dev/mapper/da", size, direct=True) == data
    finally:
        dmloop.remove("da")


def test_inline_data_file_gets_file_mode(scratch_fs):
    """A 600-byte file kept inline in its inode (ext4 -O inline_data, 1 KiB
    inodes) under a one-sector device: file mode, reason no_dio (STATX_DIOALIGN
    says 0; `inline:0` from the walk would do too), before any walk;
    the sector reads the file's first 512 bytes, and a write through the
    device changes those and nothing else."""
    try:
        mp = scratch_fs("ext4", dev=dmloop.scratch_disk(3), mkfs_args=("-O", "inline_data", "-I", "1024"))
    except dmloop.CommandError as e:
        pytest.skip("ext4 with inline_data not available: %s" % e)
    img = mp / "tiny"
    data = dmloop.random_bytes(600, 5)
    dmloop.write_bytes(img, data, fsync=True)
    ext = fiemap(img)
    assert ext and ext[0].flags & FIEMAP_EXTENT_DATA_INLINE, \
        "ext4 did not keep the file inline: %s" % ext
    new = dmloop.random_bytes(SECTOR, 6)
    with contextlib.ExitStack() as stack:
        dev = dmloop.create("inl", "0 1 loop %s 0" % img)
        stack.callback(dmloop.remove, "inl")
        reason = file_mode_reason("inl")
        assert reason in ("no_dio", "inline:0"), reason
        walk = debugfs_info("inl").get("walk")
        assert walk == ("none" if reason == "no_dio" else "fiemap"), (reason, walk)
        assert dmloop.read_bytes(dev, SECTOR, direct=True) == data[:SECTOR]
        dmloop.write_bytes(dev, new, direct=True, fsync=True)
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, 4096) == new + data[SECTOR:]


# ------------------------------------------------------------ reflink, unshared

def test_reflinked_then_unshared_xfs_file(xfs):
    """An XFS file cloned (FICLONE, cp --reflink) and then unshared over its
    whole length (FALLOC_FL_UNSHARE_RANGE): FIEMAP shows no shared extent.
    Whatever mode the table gets, it is consistent: block mode with FIEMAP's
    table, or file mode with bmap_mismatch:<b> (xfs_vm_bmap() says 0 while
    the inode keeps its reflink flag) or shared:<b>; and writes through the
    device never reach the clone's partner."""
    if "reflink=1" not in dmloop.run(["xfs_info", str(xfs)]).stdout:
        pytest.skip("mkfs.xfs made a filesystem without reflink")
    size = 4 * MiB
    orig, copy = xfs / "unshare-orig", xfs / "unshare-copy"
    dmloop.write_random(orig, size, seed=7, fsync=True)
    dmloop.run(["cp", "--reflink=always", str(orig), str(copy)])
    assert all(e.flags & FIEMAP_EXTENT_SHARED for e in fiemap(copy)), fiemap(copy)
    fd = os.open(copy, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_UNSHARE_RANGE, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not any(e.flags & FIEMAP_EXTENT_SHARED for e in fiemap(copy)), fiemap(copy)
    with contextlib.ExitStack() as stack:
        dev = dmloop.create("unsh", table(copy, size))
        stack.callback(dmloop.remove, "unsh")
        st = status_fields("unsh")
        if st["mode"] == "block":
            assert_block_table("unsh", copy, size)
            print("reflinked+unshared XFS file: block mode, %d extents" % st["extents"])
        else:
            assert st["reason"].split(":")[0] in ("bmap_mismatch", "shared") and \
                st["reason"].split(":")[1].isdigit(), st
            print("reflinked+unshared XFS file: file mode, reason %s" % st["reason"])
        dmloop.verify_random(dev, size, seed=7, direct=True)
        dmloop.write_random(dev, size, seed=8, direct=True, fsync=True)
    dmloop.drop_caches()
    dmloop.verify_random(orig, size, seed=7)
    dmloop.verify_random(copy, size, seed=8)


# ------------------------------------------------------------ many extents

@pytest.mark.parametrize("count", COUNTS)
def test_extent_count_across_walk_batches(frag1k, count):
    """A file of exactly 1023, 1024, 1025 and 2049 extents (one per 1 KiB
    block; the walk asks FIEMAP for 1024 at a time): block mode, the debugfs
    table is FIEMAP's, one entry per extent, built by the FIEMAP walk."""
    img = frag1k / ("c%d" % count)
    size = count * KiB
    dmloop.create("batch", table(img, size))
    try:
        assert len(assert_block_table("batch", img, size)) == count
    finally:
        dmloop.remove("batch")


def test_more_than_50000_extents():
    """A file of 50,001 extents (one per 1 KiB block): block mode, the
    debugfs table is FIEMAP's, entry for entry; writes through the device
    at the start, the middle and the end are in the file afterwards."""
    n = 50001
    with laid_out_ext4_1k(dmloop.scratch_disk(3), [("big", n)], [(n + n // 20 + 64, 1, 1)]) as mp:
        img = mp / "big"
        size = n * KiB
        t0 = time.monotonic()
        dmloop.create("many", table(img, size))
        setup = time.monotonic() - t0
        spots = [0, size // 2 - 3 * KiB, size - 64 * KiB]
        try:
            assert len(assert_block_table("many", img, size)) == n
            for i, off in enumerate(spots):
                dmloop.write_random("/dev/mapper/many", 64 * KiB, seed=50 + i, offset=off,
                                    direct=True, fsync=True)
        finally:
            dmloop.remove("many")
        dmloop.drop_caches()
        for i, off in enumerate(spots):
            dmloop.verify_random(img, 64 * KiB, seed=50 + i, offset=off)
        print("50001 extents: dmsetup create took %.2f s" % setup)


def test_unaligned_extents_on_1k_blocks(frag1k):
    """1 KiB blocks, extents of 3 blocks 2 blocks apart: most start off a
    4 KiB page on disk and in the file.  Block mode with FIEMAP's table;
    data written to the file reads back through the device; fio writes
    and verifies through it with I/O sizes from 512 bytes to 16 KiB (bios
    cut at every extent end), and what it left is in the file afterwards."""
    img = frag1k / "odd"
    size = ODD_BLOCKS * KiB
    ext = fiemap(img)
    assert len(ext) >= ODD_BLOCKS // 3 - 8, ext[:8]
    assert sum(1 for e in ext if e.physical % 4096) > len(ext) // 2, ext[:8]
    assert sum(1 for e in ext if e.logical % 4096) > len(ext) // 2, ext[:8]
    data = dmloop.random_bytes(size, 9)
    dmloop.write_bytes(img, data, direct=True, fsync=True)
    dmloop.create("odd", table(img, size))
    try:
        assert_block_table("odd", img, size)
        dev = "/dev/mapper/odd"
        assert dmloop.read_bytes(dev, size, direct=True) == data
        p = dmloop.run(["fio", "--name=odd", "--filename=%s" % dev, "--rw=randwrite",
                        "--bsrange=512-16k", "--direct=1", "--ioengine=psync",
                        "--size=%d" % size, "--io_size=%d" % (2 * size), "--verify=crc32c",
                        "--verify_fatal=1", "--randseed=19", "--output-format=terse"],
                       check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        want = dmloop.sha256_of(dev, size, direct=True)
    finally:
        dmloop.remove("odd")
    dmloop.drop_caches()
    assert dmloop.sha256_of(img, size) == want, "the file does not hold what the device had"


# ------------------------------------------------------------ bmap_walk=Y

def test_bmap_walk_parameter(frag1k):
    """bmap_walk=Y: a new table over a 1025-extent file is built by the old
    per-block walk (`walk: bmap`) and is the same table the FIEMAP walk
    builds; over a sparse file the reason is `unmapped:<block>`; the
    parameter goes back to N however the test ends."""
    if not BMAP_WALK.exists():
        pytest.fail("the module has no bmap_walk parameter (%s)" % BMAP_WALK)
    img = frag1k / ("c%d" % (WALK_BATCH + 1))
    size = (WALK_BATCH + 1) * KiB
    sparse = frag1k / "sparse"
    dmloop.write_random(sparse, 64 * KiB, seed=10, fsync=True)
    os.truncate(sparse, MiB)
    dmloop.create("bw", table(img, size))
    try:
        by_fiemap = assert_block_table("bw", img, size)
    finally:
        dmloop.remove("bw")
    assert BMAP_WALK.read_text().strip() == "N"
    BMAP_WALK.write_text("Y")
    try:
        dmloop.create("bw", table(img, size))
        try:
            assert assert_block_table("bw", img, size, walk="bmap") == by_fiemap
        finally:
            dmloop.remove("bw")
        dmloop.create("bw", table(sparse, MiB))
        try:
            assert file_mode_reason("bw") == "unmapped:%d" % (64 * KiB // block_size(frag1k))
            assert debugfs_info("bw").get("walk") == "bmap"
        finally:
            dmloop.remove("bw")
    finally:
        BMAP_WALK.write_text("N")
    assert BMAP_WALK.read_text().strip() == "N"


# ------------------------------------------------------------ decide before pinning

# A second process (not a thread: the GIL could hold it off during an
# ioctl) writes 4 KiB at offset 0 and fallocates (KEEP_SIZE) over that
# written block, in a loop, and counts what fails.  Both are refused with
# ETXTBSY while the file is pinned like a swapfile.
WRITER = r"""
import ctypes, errno, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
fd = os.open(sys.argv[1], os.O_WRONLY)
buf = b"\xa5" * 4096
out = {"pwrite": 0, "fallocate": 0, "errors": {}}
def failed(what, e):
    key = "%s %s" % (what, errno.errorcode.get(e, e))
    out["errors"][key] = out["errors"].get(key, 0) + 1
os.pwrite(fd, buf, 0)
print("ready", flush=True)
while not stop:
    try:
        os.pwrite(fd, buf, 0)
        out["pwrite"] += 1
    except OSError as e:
        failed("pwrite", e.errno)
    if libc.fallocate(fd, 1, 0, 4096):
        failed("fallocate", ctypes.get_errno())
    else:
        out["fallocate"] += 1
print(json.dumps(out), flush=True)
"""


@contextlib.contextmanager
def writer(path):
    """Run WRITER on `path`; yields a dict filled with its counts at the end."""
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    result = {}
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        yield result
    finally:
        p.terminate()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, "writer failed: %s" % err
        result.update(json.loads(out.strip().splitlines()[-1]))


def test_fallback_never_pins_the_file(ext4):
    """A sparse file (32 MiB written, then a 4 MiB hole: the walk reaches
    the hole last) while another process writes and fallocates its first
    block in a loop: 25 devices created over it (and removed), and 5
    reloads of a block-mode device's table over it, all come up in file
    mode with reason hole:<first block of the hole>, and the other process
    never gets ETXTBSY: the mode is decided before the file is pinned.
    (The old code pinned the file first, walked it with bmap() and then
    fell back: every write in that window failed with ETXTBSY.)"""
    img = ext4 / "sparse-end"
    other = ext4 / "whole"
    written, size = 32 * MiB, 36 * MiB
    dmloop.write_random(img, written, seed=11, fsync=True)
    os.truncate(img, size)
    dmloop.write_random(other, MiB, seed=12, fsync=True)
    want = "hole:%d" % (written // block_size(ext4))
    line = table(img, size)
    creates, reloads = [], []
    with DmControl() as dm, writer(img) as counts:
        for i in range(25):
            dm.create("pin0")
            try:
                dm.load_line("pin0", line)
                dm.resume("pin0")
                f = dm.status("pin0")[0][3].split()
                creates.append((f[0], f[6]))
            finally:
                dm.remove_retry("pin0")
        dm.create("pin1")
        try:
            dm.load_line("pin1", table(other, MiB))
            dm.resume("pin1")
            for i in range(5):
                dm.load_line("pin1", line)
                f = dm.status("pin1", inactive=True)[0][3].split()
                reloads.append((f[0], f[6]))
                dm.clear("pin1")
            assert dm.status("pin1")[0][3].split()[0] == "block"
        finally:
            dm.remove_retry("pin1")
    busy = {k: v for k, v in counts["errors"].items() if k.endswith("ETXTBSY")}
    assert not busy, (
        "the other process's writes to %s failed with ETXTBSY (%s; %d pwrite and %d "
        "fallocate went through) while tables over it fell back to file mode (%s): "
        "the file was pinned before the mode was decided"
        % (img, ", ".join("%s: %d" % kv for kv in sorted(busy.items())), counts["pwrite"],
           counts["fallocate"], sorted(set(creates + reloads))))
    assert not counts["errors"], counts
    assert counts["pwrite"] > 25 and counts["fallocate"] > 25, counts
    assert set(creates) == {("file", want)}, creates
    assert set(reloads) == {("file", want)}, reloads


# ------------------------------------------------------------ a loader that shares its memory

def test_multithreaded_loader_gets_the_bmap_walk_under_the_pin(frag1k):
    """The FIEMAP records pass through the loader's memory, where another
    thread of it could rewrite one between the filesystem's write and the
    module's read.  So while a second thread of this process lives, the
    table comes from the bmap() walk (`walk: bmap`), and it is the table a
    single-threaded load builds with FIEMAP; the walk before the pin still
    uses FIEMAP (a sparse file: file mode, `hole:`, never pinned, `walk:
    fiemap`)."""
    img = frag1k / ("c%d" % (WALK_BATCH + 1))
    size = (WALK_BATCH + 1) * KiB
    sparse = frag1k / "sparse-mt"
    dmloop.write_random(sparse, 64 * KiB, seed=13, fsync=True)
    os.truncate(sparse, MiB)
    import threading
    with DmControl() as dm:
        def load(line):
            dm.create("mt")
            dm.load_line("mt", line)
            dm.resume("mt")
            info = dict(ln.split(": ", 1) for ln in dm.message("mt", 0, "info").splitlines())
            return info.get("walk"), dm.status("mt")[0][3].split()

        def kernel_table(name):
            minor = os.minor(dm.info(name).devno)
            insts = sorted(DEBUGFS.glob("dm-%d-0-*" % minor),
                           key=lambda p: int(p.name.split("-")[-1]))
            lines = (insts[0] / "extents").read_text().splitlines()
            return [tuple(int(x) for x in ln.split()[1:]) for ln in lines
                    if ln.strip() and not ln.startswith("#")]

        try:
            assert threading.active_count() == 1, threading.enumerate()
            walk, st = load(table(img, size))
            alone = kernel_table("mt")
            assert (walk, st[0]) == ("fiemap", "block"), (walk, st)
        finally:
            dm.remove_retry("mt")
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, daemon=True)
        t.start()
        try:
            try:
                walk, st = load(table(img, size))
                assert (walk, st[0]) == ("bmap", "block"), (walk, st)
                assert kernel_table("mt") == alone
            finally:
                dm.remove_retry("mt")
            try:
                walk, st = load(table(sparse, MiB))
                assert (walk, st[0], st[6]) == (
                    "fiemap", "file", "hole:%d" % (64 * KiB // block_size(frag1k))), (walk, st)
            finally:
                dm.remove_retry("mt")
        finally:
            stop.set()
            t.join(10)
