"""Block mode over sparse and preallocated XFS files (issue 22).

On XFS a file with holes or unwritten extents gets block mode: its table
records each range as written, unwritten or a hole (debugfs `extents` v2);
reads of a hole or unwritten range are zeros with no I/O; a write there is
allocated through XFS's pNFS block contract (map_blocks, commit_blocks) by
the device's worker and lands on the disk.  Proved here: data both ways on
sparse, partly and fully preallocated files, in whole blocks and in pieces
of a block; never a byte of what the disk held before (a secret under a
preallocated file); the file reads back through the VFS what the device
wrote; `xfs_repair -n` is clean afterwards; fio --verify=crc32c over a
sparse file.  ext4 keeps file mode for the same files (test_file_mode.py).
"""

import errno
import mmap
import os
import re

import pytest

import dmloop
import filemode_util as fm
from safety_util import (FIEMAP_EXTENT_UNWRITTEN, MiB, assert_refused, debugfs_info, fiemap,
                         mount_source, read_host_blocks, status_fields, table, write_probe)
from test_block_safety import SECRET, fill_free_space, fill_up, small_fs

KiB = 1 << 10
DEV = "/dev/mapper/sx"
REASON_RE = re.compile(r"^holes:(\d+)/unwritten:(\d+)$")


@pytest.fixture(autouse=True)
def pnfs_block_ops():
    """XFS has map_blocks/commit_blocks only with CONFIG_EXPORTFS_BLOCK_OPS
    (Debian's 6.1 and our 7.2 have it; our 6.12 and debug kernels do not,
    and keep file mode for such files)."""
    if not dmloop.filesystem_available("xfs"):
        dmloop.modprobe("xfs")
    with open("/proc/kallsyms") as f:
        if not any(line.rstrip().endswith(" xfs_fs_map_blocks") or
                   " xfs_fs_map_blocks\t" in line for line in f):
            pytest.skip("this kernel's XFS has no pNFS block export operations "
                        "(CONFIG_EXPORTFS_BLOCK_OPS)")


def make_file(path, size, kind):
    """A `size` file of one of three layouts, with its first MiB written
    (random_bytes(MiB, 1)); returns the bytes the file holds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if kind == "sparse":
            os.ftruncate(fd, size)
        elif kind == "prealloc":
            os.posix_fallocate(fd, 0, size)
        elif kind == "partial":         # holes and unwritten ranges both
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, size // 4, size // 4)
            os.posix_fallocate(fd, 3 * size // 4, size // 8)
    finally:
        os.close(fd)
    dmloop.write_random(path, MiB, seed=1, fsync=True)
    return bytearray(dmloop.random_bytes(MiB, 1) + bytes(size - MiB))


def extents_v2(name):
    """The device's debugfs extent table: [(dev_sector, sectors, host, state)]."""
    minor = os.minor(os.stat("/dev/mapper/" + name).st_rdev)
    inst = sorted(p for p in fm_debugfs().glob("dm-%d-*" % minor))[0]
    lines = (inst / "extents").read_text().splitlines()
    assert lines[0] == "# dm-loop extents v2", lines[:3]
    rows = [l.split() for l in lines if not l.startswith("#")]
    return [(int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows]


def fm_debugfs():
    from safety_util import DEBUGFS
    return DEBUGFS


def xfs_repair_clean(mp):
    dev = mount_source(mp)
    dmloop.umount(mp)
    try:
        p = dmloop.run(["xfs_repair", "-n", dev], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        dmloop.run(["mount", dev, str(mp)])


# (offset, length): whole blocks, a 1 MiB run across a chunk boundary,
# pieces of a block (512 B at its start, middle and end), a write spanning
# written, unwritten and hole ranges at once
WRITES = [(2 * MiB, 4 * KiB), (4 * MiB - 512 * KiB, MiB), (6 * MiB + 512, 512),
          (6 * MiB + 8 * KiB + 1536, 1024), (6 * MiB + 20 * KiB - 512, 512),
          (MiB - 4 * KiB, 64 * KiB), (3 * MiB - 8 * KiB, 16 * KiB)]


@pytest.mark.parametrize("kind", ["sparse", "partial", "prealloc"])
def test_data_both_ways(scratch_fs, kind):
    """Block mode with holes/unwritten ranges counted in the reason; the
    never-written ranges read as zeros; writes of whole blocks and of
    pieces of a block read back through the device (direct and buffered),
    after a reload, and through the file once the device is gone; the
    table's ranges become written; xfs_repair -n is clean."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 8 * MiB
    want = make_file(img, size, kind)
    dev = dmloop.create("sx", table(img, size))
    try:
        st = status_fields("sx")
        m = REASON_RE.match(st["reason"])
        assert st["mode"] == "block" and m, st
        holes, unwritten = int(m.group(1)), int(m.group(2))
        assert {"sparse": holes > 0, "prealloc": not holes and unwritten > 0,
                "partial": holes > 0 and unwritten > 0}[kind], st
        assert debugfs_info("sx")["mode"] == "block"
        states = {s for _, _, _, s in extents_v2("sx")}
        assert "written" in states and states - {"written"}, states
        assert write_probe(img) is not None, "a block-mode table must pin the file"

        assert dmloop.read_bytes(dev, size, direct=True) == want
        for i, (off, n) in enumerate(WRITES):
            data = dmloop.random_bytes(n, 100 + i)
            dmloop.write_bytes(dev, data, offset=off, direct=True, fsync=True)
            want[off:off + n] = data
            # a read right after the write completed sees it
            assert dmloop.read_bytes(dev, n, offset=off, direct=False) == data
        dmloop.drop_caches()
        assert dmloop.read_bytes(dev, size, direct=True) == want
        assert dmloop.read_bytes(dev, size) == want
        after = extents_v2("sx")
        for off, n in WRITES:
            s0, s1 = off // 512, (off + n) // 512
            for d, l, _, state in after:
                if d < s1 and d + l > s0:
                    assert state == "written", (off, n, after)
        dmloop.reload("sx", table(img, size))
        dmloop.resume("sx")
        assert dmloop.read_bytes(dev, size, direct=True) == want
    finally:
        dmloop.remove("sx")
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, size) == want
    assert write_probe(img) is None, "removing the device must unpin the file"
    xfs_repair_clean(mp)


def test_fully_written_file_is_v1_and_unchanged(scratch_fs):
    """A fully written XFS file's table is today's: reason '-', extents v1."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    dmloop.write_random(img, 4 * MiB, seed=3, fsync=True)
    dmloop.create("sx", table(img, 4 * MiB))
    try:
        st = status_fields("sx")
        assert (st["mode"], st["reason"]) == ("block", "-"), st
        minor = os.minor(os.stat(DEV).st_rdev)
        inst = sorted(fm_debugfs().glob("dm-%d-*" % minor))[0]
        assert (inst / "extents").read_text().startswith("# dm-loop extents v1\n")
    finally:
        dmloop.remove("sx")


def extents_text(name):
    minor = os.minor(os.stat("/dev/mapper/" + name).st_rdev)
    inst = sorted(p for p in fm_debugfs().glob("dm-%d-*" % minor))[0]
    return (inst / "extents").read_text()


def check_table(name, size):
    """The debugfs table of a sparse device: rows numbered 0.., each
    starting where the one before ends, the whole device covered, no two
    neighbours that one extent would hold, and the counts of status and
    the header match.  Returns the rows."""
    text = extents_text(name)
    rows = [l.split() for l in text.splitlines() if not l.startswith("#")]
    assert "# host " in text and (" extents %d\n" % len(rows)) in text, text[:200]
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    end = 0
    for i, r in enumerate(rows):
        d, n, h, state = int(r[1]), int(r[2]), int(r[3]), r[4]
        assert d == end and n > 0, rows[max(0, i - 2):i + 2]
        if i:
            p = rows[i - 1]
            assert not (p[4] == state and (state == "hole" or int(p[3]) + int(p[2]) == h)), \
                "extents %d and %d should be one" % (i - 1, i)
        end = d + n
    assert end == size // 512
    holes = sum(r[4] == "hole" for r in rows)
    unwritten = sum(r[4] == "unwritten" for r in rows)
    want = "holes:%d/unwritten:%d" % (holes, unwritten) if holes or unwritten else "-"
    assert status_fields(name)["reason"] == want
    return [tuple(r[1:]) for r in rows]


def test_a_table_of_many_extents_splits_and_merges_its_segments(scratch_fs):
    """Every other 4 KiB block of a preallocated file's first 6 MiB
    written: over 1,500 extents, the table's segments (a page each) split;
    the table, its numbering in debugfs and its counts stay right and match
    what XFS says after a reload.  Then the gaps, in reverse order: the
    extents merge back, across the segments, into what XFS has.  The data
    reads back through the device and the file."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 16 * MiB
    fd = os.open(img, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    want = bytearray(size)
    blocks = 6 * MiB // (4 * KiB)
    dev = dmloop.create("sx", table(img, size))
    try:
        assert status_fields("sx")["mode"] == "block"
        fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4 * KiB)
        try:
            for order in (range(0, blocks, 2), range(blocks - 1, 0, -2)):
                for b in order:
                    data = dmloop.random_bytes(4 * KiB, 1000 + b)
                    buf[:] = data
                    assert os.pwrite(fd, buf, b * 4 * KiB) == 4 * KiB
                    want[b * 4 * KiB:(b + 1) * 4 * KiB] = data
                os.fsync(fd)
                rows = check_table("sx", size)
                if order.start == 0:
                    assert len(rows) == blocks, len(rows)   # 768 written, 768 not
                assert dmloop.read_bytes(dev, size, direct=True) == want
                # A reload reads the layout afresh from XFS: the same table.
                dmloop.reload("sx", table(img, size))
                dmloop.resume("sx")
                assert check_table("sx", size) == rows
        finally:
            buf.close()
            os.close(fd)
        assert len(rows) <= 4, rows
    finally:
        dmloop.remove("sx")
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, size) == want
    xfs_repair_clean(mp)


def test_two_targets_of_one_table_cannot_share_a_sparse_file(scratch_fs):
    """Each target has its own table of the file's ranges and allocates
    on its own: two over one sparse file would each write zeros over the
    rest of a block the other wrote, and read zeros where the other wrote.
    A table with two targets over a sparse file is refused, and leaves
    nothing pinned; over a fully written file, two targets still load."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 8 * MiB
    make_file(img, size, "partial")
    half = size // 2 // 512
    two = "0 %d loop %s 0\n%d %d loop %s %d" % (half, img, half, half, img, size // 2)
    assert_refused("sx", two, "A sparse file can back only one target of a table", "EBUSY")
    assert write_probe(img) is None, "a refused table must leave the file unpinned"
    # One target of it alone is fine, and so is a second device afterwards.
    dmloop.create("sx", table(img, size))
    dmloop.remove("sx")
    full = mp / "full"
    dmloop.write_random(full, size, seed=5, fsync=True)
    dmloop.create("sx", "0 %d loop %s 0\n%d %d loop %s %d"
                  % (half, full, half, half, full, size // 2))
    try:
        assert dmloop.status("sx").count(" loop ") == 2
        want = dmloop.random_bytes(size, 5)
        assert dmloop.read_bytes(DEV, size, direct=True) == want
    finally:
        dmloop.remove("sx")


def unwritten_at(img, off, n):
    """Whether XFS's FIEMAP calls any of file bytes [off, off + n) unwritten."""
    return any(e.flags & FIEMAP_EXTENT_UNWRITTEN and e.logical < off + n and
               e.logical + e.length > off for e in fiemap(img))


def test_a_write_is_converted_when_it_completes(scratch_fs):
    """A write into unwritten blocks completes only once XFS has converted
    them (FIEMAP no longer calls them unwritten), with no flush from the
    device's user: a host disk without a volatile write cache would see
    no flush at all (dm drops them), and a suspend cannot fail."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 8 * MiB
    want = make_file(img, size, "prealloc")
    dev = dmloop.create("sx", table(img, size))
    try:
        for i, (off, n) in enumerate(((2 * MiB, 64 * KiB), (4 * MiB, 4 * KiB),
                                      (6 * MiB + 512, 512))):
            data = dmloop.random_bytes(n, 61 + i)
            dmloop.write_bytes(dev, data, offset=off, direct=True)
            want[off:off + n] = data
            assert not unwritten_at(img, off, n), "completed, not converted: %d+%d" % (off, n)
        assert dmloop.read_bytes(dev, size, direct=True) == want
    finally:
        dmloop.remove("sx")
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, size) == want
    xfs_repair_clean(mp)


def test_reload_and_a_loader_without_fiemap_read_the_layout_from_xfs(scratch_fs):
    """A table loaded where FIEMAP cannot be used (a loader whose address
    space another thread shares, or bmap_walk=Y) reads a sparse XFS file
    with map_blocks() (debugfs `walk: map_blocks`), and so does a reload
    over the device's own pin: it gets block mode, where the bmap walk saw
    only a hole; a reload of a device that has written into holes keeps
    every byte."""
    from test_extent_walk import BMAP_WALK
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 8 * MiB
    want = make_file(img, size, "partial")
    dev = dmloop.create("sx", table(img, size))
    try:
        assert debugfs_info("sx")["walk"] == "fiemap"
        for i, off in enumerate((2 * MiB, 5 * MiB + 4 * KiB, 7 * MiB)):
            data = dmloop.random_bytes(64 * KiB, 70 + i)
            dmloop.write_bytes(dev, data, offset=off, direct=True)
            want[off:off + len(data)] = data
        BMAP_WALK.write_text("Y")
        try:
            dmloop.reload("sx", table(img, size))
            dmloop.resume("sx")
            info = debugfs_info("sx")
            assert (info["mode"], info["walk"]) == ("block", "map_blocks"), info
            assert REASON_RE.match(status_fields("sx")["reason"])
            assert dmloop.read_bytes(dev, size, direct=True) == want
        finally:
            BMAP_WALK.write_text("N")
    finally:
        dmloop.remove("sx")
    BMAP_WALK.write_text("Y")
    try:
        dmloop.create("sx", table(img, size))
        try:
            info = debugfs_info("sx")
            assert (info["mode"], info["walk"]) == ("block", "map_blocks"), info
            assert dmloop.read_bytes(dev, size, direct=True) == want
        finally:
            dmloop.remove("sx")
    finally:
        BMAP_WALK.write_text("N")
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, size) == want
    xfs_repair_clean(mp)


def test_preallocated_file_never_shows_the_secret():
    """Free space filled with a secret, then a file preallocated over it:
    block mode; reads of the whole device, and partial-block writes (whose
    block's rest must become zeros, not the secret), never return one byte
    of it, through the device or through the file afterwards."""
    with small_fs("xfs", 3) as mp:
        fill_free_space(mp, SECRET)
        img = mp / "img"
        size = 8 * MiB
        fd = os.open(img, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        unwritten = [e for e in fiemap(img) if e.flags & FIEMAP_EXTENT_UNWRITTEN]
        raw = read_host_blocks(mount_source(mp), unwritten)
        assert raw.count(SECRET) * len(SECRET) > len(raw) // 2, \
            "the secret should be on disk under the unwritten extents"
        want = bytearray(size)
        dev = dmloop.create("sx", table(img, size))
        try:
            st = status_fields("sx")
            assert st["mode"] == "block" and REASON_RE.match(st["reason"]), st
            got = dmloop.read_bytes(dev, size, direct=True)
            assert SECRET not in got and got == want
            for i, off in enumerate((512, 4096 + 1024, 3 * MiB + 3584, 5 * MiB)):
                data = (b"new data %d " % i * 64)[:512]
                dmloop.write_bytes(dev, data, offset=off, direct=True, fsync=True)
                want[off:off + 512] = data
            dmloop.drop_caches()
            for direct in (True, False):
                got = dmloop.read_bytes(dev, size, direct=direct)
                assert SECRET not in got, "secret readable through the device"
                assert got == want
        finally:
            dmloop.remove("sx")
        dmloop.drop_caches()
        got = dmloop.read_bytes(img, size)
        assert SECRET not in got and got == want


def test_fio_verify_over_a_sparse_file(scratch_fs):
    """fio writes and verifies (crc32c) 4 KiB random blocks and 1 MiB runs
    over a sparse file's device, 8 jobs at queue depth 16."""
    mp = scratch_fs("xfs", dev=dmloop.scratch_disk(0))
    img = mp / "img"
    size = 64 * MiB
    fm.make_sparse(img, size)
    dev = dmloop.create("sx", table(img, size))
    try:
        assert status_fields("sx")["reason"] == "holes:1/unwritten:0"
        for bs, rw in (("1M", "write"), ("4k", "randwrite")):
            p = fm.fio(dev, "--rw=%s" % rw, "--bs=%s" % bs, "--direct=1", "--ioengine=libaio",
                       "--iodepth=16", "--numjobs=8", "--size=%d" % (size // 8),
                       "--offset_increment=%d" % (size // 8), "--verify=crc32c",
                       "--verify_fatal=1", "--verify_state_save=0", "--group_reporting")
            assert fm.fio_errors(p.stdout) == 0, p.stdout
        assert dmloop.status("sx").split()[2] == "loop"
    finally:
        dmloop.remove("sx")
    xfs_repair_clean(mp)


def test_power_cut_keeps_what_a_flush_covered_and_never_shows_stale_data(tmp_path):
    """XFS on a dm device over a scratch disk whose free space holds a
    secret, a sparse file's device on it.  Writes acknowledged before a
    flush; then the disk drops every write (dm-flakey drop_writes: a power
    cut that the host does not notice); more writes into holes; the stack
    comes down and XFS is mounted from the disk again (log recovery).  The
    flushed data is all there; what was written after the cut reads as
    zeros or as the new data, never as the secret; xfs_repair -n is clean."""
    from test_block_safety import XFS_SMALL_ENV
    dmloop.modprobe("dm-flakey")
    disk = dmloop.scratch_disk(2)
    sectors = dmloop.device_size(disk) // 512
    lower = dmloop.create("sx-host", "0 %d linear %s 0" % (sectors, disk))
    mp = tmp_path / "mnt"
    mp.mkdir()
    size = 16 * MiB
    kept = [(0, dmloop.random_bytes(MiB, 41)), (8 * MiB + 4 * KiB, dmloop.random_bytes(4 * KiB, 42)),
            (10 * MiB + 512, dmloop.random_bytes(512, 43))]
    lost = [(4 * MiB, dmloop.random_bytes(MiB, 44)), (12 * MiB + 1024, dmloop.random_bytes(512, 45)),
            (MiB + 8 * KiB, dmloop.random_bytes(8 * KiB, 46))]
    mounted = False
    try:
        dmloop.run(["mkfs.xfs", "-f", "-q", lower], env=dict(os.environ, **XFS_SMALL_ENV))
        dmloop.run(["mount", lower, str(mp)])
        mounted = True
        fill_free_space(mp, SECRET)
        img = mp / "img"
        fm.make_sparse(img, size)
        os.sync()
        dev = dmloop.create("sx", table(img, size))
        try:
            assert status_fields("sx")["mode"] == "block"
            for off, data in kept:
                dmloop.write_bytes(dev, data, offset=off, direct=True)
            fd = os.open(dev, os.O_RDONLY)
            try:
                os.fsync(fd)                # the flush that covers them
            finally:
                os.close(fd)
            # The cut: from here on the disk keeps nothing, and says it did.
            dmloop.suspend("sx-host", "--nolockfs")
            dmloop.reload("sx-host", "0 %d flakey %s 0 0 3600 1 drop_writes" % (sectors, disk))
            dmloop.resume("sx-host")
            # (No read-back here: the disk drops the data and keeps what it
            # held, as any lying disk; what counts is what XFS finds after.)
            for off, data in lost:
                dmloop.write_bytes(dev, data, offset=off, direct=True, fsync=True)
        finally:
            dmloop.remove("sx")
        dmloop.umount(mp)
        mounted = False
        dmloop.remove("sx-host")
        lower = None
        dmloop.run(["mount", disk, str(mp)])     # log recovery, from what the disk kept
        mounted = True
        got = dmloop.read_bytes(mp / "img", size)
        assert SECRET not in got, "stale data (the secret) in the file after the power cut"
        want = bytearray(size)
        for off, data in kept:
            want[off:off + len(data)] = data
            assert got[off:off + len(data)] == data, "flushed write at %d lost" % off
        for off, data in lost:
            piece = got[off:off + len(data)]
            assert piece in (data, bytes(len(data))), "write after the cut at %d half there" % off
            want[off:off + len(data)] = piece
        assert got == want
        dmloop.umount(mp)
        mounted = False
        p = dmloop.run(["xfs_repair", "-n", disk], check=False)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        if mounted:
            dmloop.umount(mp)
        if lower:
            dmloop.remove("sx-host")


def write_fails(dev, data, offset):
    """A direct write that must fail: its errno, and the kernel log since."""
    pos = dmloop.kmsg_pos()
    with pytest.raises(OSError) as ei:
        dmloop.write_bytes(dev, data, offset=offset, direct=True)
    return ei.value.errno, dmloop.kmsg_since(pos)


def test_a_full_host_filesystem_fails_a_write_into_a_hole_and_nothing_else():
    """A sparse file larger than its XFS filesystem: once the filesystem
    is full, a write into a hole fails with ENOSPC (and a line in the
    kernel log), never completes as if done, and leaves that range
    reading zeros; what was written before reads back, written ranges
    still take writes; once space is freed the hole takes the write."""
    with small_fs("xfs", 3) as mp:
        img = mp / "img"
        size = 128 * MiB
        fm.make_sparse(img, size)
        dev = dmloop.create("sx", table(img, size))
        try:
            want = bytearray(size)
            first = dmloop.random_bytes(MiB, 81)
            dmloop.write_bytes(dev, first, offset=0, direct=True)
            want[:MiB] = first
            fill_up(mp / "filler", b"\xa5")
            late = dmloop.random_bytes(MiB, 82)
            err, log = write_fails(dev, late, 100 * MiB)
            assert err in (errno.ENOSPC, errno.EIO), os.strerror(err)
            assert any("write into a hole" in line for line in log), log
            assert status_fields("sx")["mode"] == "block"
            again = dmloop.random_bytes(64 * KiB, 83)
            dmloop.write_bytes(dev, again, offset=4 * KiB, direct=True)
            want[4 * KiB:4 * KiB + len(again)] = again
            assert dmloop.read_bytes(dev, size, direct=True) == want
            os.unlink(mp / "filler")
            dmloop.sync()
            dmloop.write_bytes(dev, late, offset=100 * MiB, direct=True, fsync=True)
            want[100 * MiB:101 * MiB] = late
            assert dmloop.read_bytes(dev, size, direct=True) == want
        finally:
            dmloop.remove("sx")
        dmloop.drop_caches()
        assert dmloop.read_bytes(img, size) == want
        xfs_repair_clean(mp)


def test_a_shut_down_host_filesystem_fails_writes_into_holes():
    """XFS shut down under a sparse file's device (xfs_io's `shutdown`,
    as after a metadata I/O error): a write into a hole fails with an
    error and a line in the kernel log, never completes; the device comes
    down, and the filesystem unmounts, without a hang."""
    with small_fs("xfs", 3) as mp:
        img = mp / "img"
        size = 16 * MiB
        fm.make_sparse(img, size)
        dev = dmloop.create("sx", table(img, size))
        try:
            dmloop.write_bytes(dev, dmloop.random_bytes(MiB, 84), offset=0, direct=True)
            dmloop.run(["xfs_io", "-x", "-c", "shutdown", str(mp)])
            err, log = write_fails(dev, dmloop.random_bytes(MiB, 85), 8 * MiB)
            assert err == errno.EIO, os.strerror(err)
            assert any("write into a hole" in line for line in log), log
        finally:
            dmloop.remove("sx")
