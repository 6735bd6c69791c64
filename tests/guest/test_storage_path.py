"""Storage-path correctness (issue 18): what the target must refuse, and
what it must not turn into success.

- zeroing more than a bio's 32-bit bi_size holds (BLKZEROOUT over a 6 GiB
  device, a hole punch over a 3 TiB sparse one) zeroes every region;
- write zeroes with REQ_NOUNMAP never unmaps (tmpfs has no ZERO_RANGE);
- ext4 files with journalled data (the mount option, chattr +j) and
  fs-verity files are never block mapped;
- a file another file-mode device uses gives file mode, never EBUSY, and
  a device can reload its own table;
- a table whose file sits on the device itself, directly or through
  another dm-loop device, is refused (each resume would loop forever);
- the destructor waits out a bio_endio() it overtook (debug build);
- pinning races a hole punch: every block-mode table matches FIEMAP;
- file mode's queue says the truth; block mode takes REQ_NOWAIT;
- `dmsetup table` prints what reloads to the same table.
"""

import contextlib
import ctypes
import fcntl
import os
import random
import struct
import threading
import time
from pathlib import Path

import pytest

import dmloop
from filemode_util import (
    MiB, allocated_bytes, file_table, kernel_at_least, loop_device, make_sparse, queue_attr,
    status_fields, tmpfs_mount)
from reliability_util import direct_io, fiemap, with_deadline

GiB = 1 << 30
TiB = 1 << 40


def _write_marks(dev, offsets, seed):
    for i, off in enumerate(offsets):
        assert direct_io(dev, "write", off, MiB, dmloop.random_bytes(MiB, seed + i)) == 0
    assert direct_io(dev, "fsync", 0, 0) == 0


def _assert_zeroed(dev, offsets):
    left = [off for off in offsets
            if dmloop.read_bytes(dev, MiB, off, direct=True) != bytes(MiB)]
    assert not left, "data left behind at %s" % ", ".join("%.2f GiB" % (o / GiB) for o in left)


@contextlib.contextmanager
def _ext4_over_tmpfs(size):
    """An ext4 (no journal) on /dev/loop over a sparse tmpfs file of `size`:
    room for zeroing a range larger than 4 GiB in a 2 GiB guest."""
    with tmpfs_mount("%dg" % (size // GiB + 1)) as t:
        img = Path(t) / "fs.img"
        make_sparse(img, size)
        dmloop.modprobe("loop")
        loopdev = dmloop.run(["losetup", "-f", "--show", str(img)]).stdout.strip()
        try:
            with dmloop.mounted_fs("ext4", dev=loopdev,
                                   mkfs_args=("-O", "^has_journal", "-E",
                                              "lazy_itable_init=1,nodiscard")) as mp:
                yield mp
        finally:
            dmloop.run(["losetup", "-d", loopdev], check=False)


def test_zeroout_larger_than_4g_zeroes_everything():
    """BLKZEROOUT (blkdiscard -z) over a 6 GiB file-mode device leaves no
    data at 1, 3 and 5 GiB nor at the end: 6.1 put max_write_zeroes_sectors
    << 9 in a 32-bit bi_size, so only the first 2 GiB were zeroed."""
    size = 6 * GiB
    with _ext4_over_tmpfs(8 * GiB) as mp:
        img = mp / "img"
        make_sparse(img, size)
        with loop_device("zero6g", img, size, opts=("force_file",)) as dev:
            marks = [1 * GiB, 3 * GiB, 5 * GiB, size - MiB]
            _write_marks(dev, marks, seed=60)
            dmloop.run(["blkdiscard", "-z", str(dev)])
            _assert_zeroed(dev, marks)
            if not kernel_at_least(6, 12):      # 6.12 caps each bio itself
                wz = int(queue_attr(dev, "write_zeroes_max_bytes"))
                assert 0 < wz < 4 * GiB, "write_zeroes_max_bytes %d does not fit a bio" % wz


def test_punch_over_3t_sparse_device_zeroes_everything():
    """fallocate --punch-hole over a whole 3 TiB file-mode device (tmpfs,
    sparse) zeroes data at 1 GiB, past 2 TiB and at the end."""
    size = 3 * TiB
    with tmpfs_mount("4t") as t:
        img = Path(t) / "img"
        make_sparse(img, size)
        with loop_device("zero3t", img, size) as dev:
            marks = [1 * GiB, 2 * TiB + 5 * GiB, size - MiB]
            _write_marks(dev, marks, seed=70)
            dmloop.run(["fallocate", "--punch-hole", "--offset", "0", "--length",
                        str(size), str(dev)])
            _assert_zeroed(dev, marks)
            assert allocated_bytes(img) == 0, "the punch left blocks allocated"


def test_write_zeroes_nounmap_keeps_blocks_on_tmpfs():
    """BLKZEROOUT (REQ_NOUNMAP) on tmpfs, which has no ZERO_RANGE: the
    range reads zeros and stays allocated (it used to be punched)."""
    with tmpfs_mount("64m") as t:
        img = Path(t) / "img"
        dmloop.write_random(img, 8 * MiB, seed=80, fsync=True)
        with loop_device("nounmap", img, 8 * MiB) as dev:
            assert status_fields("nounmap")["reason"] == "no_bdev"
            before = allocated_bytes(img)
            dmloop.run(["blkdiscard", "-z", "-o", str(2 * MiB), "-l", str(2 * MiB), str(dev)])
            assert dmloop.read_bytes(dev, 2 * MiB, 2 * MiB, direct=True) == bytes(2 * MiB)
            assert allocated_bytes(img) == before, (
                "write zeroes with NOUNMAP freed %d bytes" % (before - allocated_bytes(img)))


# ------------------------------------------------------------ what block mode refuses

@pytest.fixture
def ext4(scratch_fs):
    return scratch_fs("ext4", dev=dmloop.scratch_disk(1))


def _expect_file_mode(name, img, size, reason, readonly=False):
    """A plain table gives file mode with `reason`; require_block is refused
    with a clear error."""
    with loop_device(name, img, size) if not readonly else _ro_device(name, img, size):
        st = status_fields(name)
        assert (st["mode"], st["reason"]) == ("file", reason), st
    pos = dmloop.kmsg_pos()
    p = dmloop.dmsetup("create", name, *(["--readonly"] if readonly else []),
                       input=file_table(img, size, opts=("require_block",)) + "\n",
                       check=False)
    assert p.returncode != 0, "require_block was accepted over a %s file" % reason
    if dmloop.exists(name):
        dmloop.dmsetup("remove", name, check=False)
    log = "\n".join(dmloop.kmsg_since(pos))
    assert "Block mode not possible" in log, (p.stderr, log)


@contextlib.contextmanager
def _ro_device(name, img, size):
    dev = dmloop.create(name, file_table(img, size), readonly=True)
    try:
        yield dev
    finally:
        dmloop.remove(name)


@pytest.mark.parametrize("how", ["mount_option", "chattr"])
def test_journalled_data_is_never_block_mapped(scratch_fs, how):
    """ext4 with data=journal (mount option, or chattr +j on one file of a
    nodelalloc mount: with delayed allocation ext4 ignores +j): file mode,
    reason no_dio; the journal could replay or checkpoint old data over
    what the device wrote to the blocks."""
    opts = "data=journal" if how == "mount_option" else "nodelalloc"
    mp = scratch_fs("ext4", dev=dmloop.scratch_disk(1), mount_opts=opts)
    img = mp / "img"
    dmloop.write_random(img, 4 * MiB, seed=90, fsync=True)
    if how == "chattr":
        dmloop.run(["chattr", "+j", str(img)])
    _expect_file_mode("jdata", img, 4 * MiB, "no_dio")
    with loop_device("jdata", img, 4 * MiB) as dev:
        dmloop.write_random(dev, MiB, seed=91, offset=MiB, direct=True, fsync=True)
    dmloop.drop_caches()
    assert dmloop.read_bytes(img, MiB, MiB) == dmloop.random_bytes(MiB, 91)


_FS_IOC_ENABLE_VERITY = 0x40806685


def _enable_verity(path):
    # struct fsverity_enable_arg: version, hash_algorithm (SHA-256), block_size,
    # salt_size, salt_ptr, sig_size, reserved1, sig_ptr, reserved2[11]
    arg = struct.pack("=IIIIQIIQ88x", 1, 1, 4096, 0, 0, 0, 0, 0)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FS_IOC_ENABLE_VERITY, arg)
    finally:
        os.close(fd)


def test_verity_file_is_never_block_mapped(scratch_fs):
    """An fs-verity file (ext4 -O verity): file mode, reason verity (block
    mode would read its blocks unverified); a read-only table, since a
    verity file cannot be opened for writing."""
    try:
        mp = scratch_fs("ext4", dev=dmloop.scratch_disk(1), mkfs_args=("-O", "verity"))
    except dmloop.CommandError as e:
        pytest.skip("ext4 with verity not available: %s" % e)
    img = mp / "img"
    dmloop.write_random(img, 4 * MiB, seed=92, fsync=True)
    try:
        _enable_verity(img)
    except OSError as e:
        pytest.skip("FS_IOC_ENABLE_VERITY failed: %s" % e)
    _expect_file_mode("verity", img, 4 * MiB, "verity", readonly=True)
    with _ro_device("verity", img, 4 * MiB) as dev:
        assert dmloop.read_bytes(dev, 4 * MiB, direct=True) == dmloop.random_bytes(4 * MiB, 92)


# ------------------------------------------------------------ sharing a file

def test_file_shared_by_file_mode_devices(ext4):
    """Two file-mode devices over one sparse file (force_file), one removed:
    a plain reload of the survivor works (file mode, in_use while its live
    table uses the file).  A plain table over a file another device uses in
    file mode gives file mode (in_use), as force_file does, never EBUSY."""
    img = ext4 / "sparse"
    size = 16 * MiB
    make_sparse(img, size)
    with loop_device("share1", img, size, opts=("force_file",)), \
            loop_device("share2", img, size, opts=("force_file",)):
        dmloop.remove("share2")
        dmloop.reload("share1", file_table(img, size))
        dmloop.resume("share1")
        assert status_fields("share1")["mode"] == "file"
    dmloop.write_random(img, size, seed=93, fsync=True)        # no holes now
    with loop_device("share1", img, size, opts=("force_file",)):
        with loop_device("share2", img, size) as dev:
            st = status_fields("share2")
            assert (st["mode"], st["reason"]) == ("file", "in_use"), st
            assert dmloop.read_bytes(dev, MiB, direct=True) == dmloop.random_bytes(MiB, 93)
    with loop_device("share1", img, size):
        assert status_fields("share1")["mode"] == "block"


# ------------------------------------------------------------ stacking on itself

def _refused_reload(name, table):
    """A reload that must be refused; if accepted, the inactive table is
    cleared (never resumed: that would hang the guest) and the test fails."""
    p = dmloop.dmsetup("reload", name, input=table + "\n", check=False)
    if p.returncode == 0:
        dmloop.dmsetup("clear", name, check=False)
        pytest.fail("reload of %s over a file on itself was accepted: %s" % (name, table))
    return p.stderr


def test_device_cannot_map_itself(ext4):
    """A over a file on the host, ext4 on A, a file g on it: a table for A
    over g is refused (plain and force_file); and A over a file on B where
    B is over a file on A.  What is no cycle (B over another file on A)
    still loads, and A keeps working."""
    size_a, size_b = 96 * MiB, 32 * MiB
    host = ext4 / "a.img"
    dmloop.write_random(host, size_a, seed=94, fsync=True)
    with loop_device("selfa", host, size_a) as a, \
            dmloop.mounted_fs("ext4", dev=str(a), mkfs_args=("-O", "^has_journal")) as mpa:
        g, g2 = mpa / "g", mpa / "g2"
        dmloop.write_random(g, size_b, seed=95, fsync=True)
        dmloop.write_random(g2, size_b, seed=97, fsync=True)
        for opts in ((), ("force_file",)):
            pos = dmloop.kmsg_pos()
            _refused_reload("selfa", file_table(g, size_b, opts=opts))
            log = "\n".join(dmloop.kmsg_since(pos))
            assert "File is on a filesystem on this device" in log, log
        with loop_device("selfb", g, size_b) as b, \
                dmloop.mounted_fs("ext4", dev=str(b), mkfs_args=("-O", "^has_journal")) as mpb:
            h = mpb / "h"
            dmloop.write_random(h, 8 * MiB, seed=96, fsync=True)
            for opts in ((), ("force_file",)):
                pos = dmloop.kmsg_pos()
                _refused_reload("selfa", file_table(h, 8 * MiB, opts=opts))
                log = "\n".join(dmloop.kmsg_since(pos))
                assert "dm-loop device stacked on this device" in log, log
                dmloop.reload("selfb", file_table(g2, size_b, opts=opts))
                dmloop.dmsetup("clear", "selfb")
        marker = mpa / "marker"
        dmloop.write_random(marker, MiB, seed=98, fsync=True)
        dmloop.drop_caches()
        assert dmloop.read_bytes(marker, MiB) == dmloop.random_bytes(MiB, 98)


# ------------------------------------------------------------ teardown race

DELAY = Path("/sys/module/dm_loop/parameters/debug_endio_delay_ms")


def test_remove_overtakes_bio_endio(ext4):
    """Debug build: each file-mode bio_endio() is followed by a 3 s sleep
    before the in-flight count drops, so a remove right after a read finds
    its destructor waiting for that count (it used to wait with the wait
    queue's own lock held: a hard lockup).  The remove finishes, cleanly,
    and it did overlap the sleep (else the test proved nothing)."""
    if not DELAY.exists():
        pytest.skip("module built without DMLOOP_DEBUG (the debug kernel's build has it)")
    img = ext4 / "img"
    dmloop.write_random(img, 4 * MiB, seed=97, fsync=True)
    tbl = file_table(img, 4 * MiB, opts=("force_file", "no_direct_io"))
    waited = []
    DELAY.write_text("3000")
    try:
        for i in range(2):
            dev = dmloop.create("race", tbl)
            assert direct_io(dev, "read", i * 4096, 4096) == 0
            t0 = time.monotonic()
            with_deadline(lambda: dmloop.remove("race"), 90, "remove racing bio_endio")
            waited.append(time.monotonic() - t0)
    finally:
        DELAY.write_text("0")
        if dmloop.exists("race"):
            dmloop.remove("race")
    assert max(waited) >= 1.0, (
        "no remove overlapped the 3 s after bio_endio (took %s s): the race was missed" % waited)


# ------------------------------------------------------------ pin vs. punch

def _debugfs_extents(name):
    minor = os.minor(os.stat("/dev/mapper/%s" % name).st_rdev)
    root = Path("/sys/kernel/debug/dm-loop")
    dirs = sorted(root.glob("dm-%d-0-*" % minor), key=lambda p: int(p.name.split("-")[-1]))
    lines = (dirs[0] / "extents").read_text().splitlines()
    return [tuple(int(x) for x in ln.split()[1:]) for ln in lines if not ln.startswith("#")]


def _fiemap_sectors(path, size):
    out = []
    for logical, physical, length in fiemap(path):
        if logical >= size:
            break
        length = min(length, size - logical)
        if out and out[-1][0] + out[-1][1] == logical // 512 and \
                out[-1][2] + out[-1][1] == physical // 512:
            out[-1] = (out[-1][0], out[-1][1] + length // 512, out[-1][2])
        else:
            out.append((logical // 512, length // 512, physical // 512))
    return out


def test_pin_races_hole_punch(ext4):
    """A thread punches holes in the file and writes them back, over and
    over, while devices are created over it: every device that comes up in
    block mode has the table FIEMAP reports while it is pinned."""
    img = ext4 / "img"
    size = 8 * MiB
    dmloop.write_random(img, size, seed=98, fsync=True)
    stop = threading.Event()
    fd = os.open(str(img), os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    rng = random.Random(5)

    def churn():
        while not stop.is_set():
            off = rng.randrange(size // 4096) * 4096
            # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, then fill it again
            if libc.fallocate(fd, 3, ctypes.c_long(off), ctypes.c_long(4096)) == 0:
                try:
                    os.pwrite(fd, b"\xa5" * 4096, off)
                    os.fdatasync(fd)
                except OSError:
                    pass
            # The file has a hole from the punch to the fdatasync: keep that
            # a small part of the time, or on a slow machine no create ever
            # sees the file whole (a CI run saw none in 15 s with 5 ms).
            time.sleep(rng.uniform(0.02, 0.1))
    t = threading.Thread(target=churn, daemon=True)
    t.start()
    block = 0
    reasons = []
    try:
        deadline = time.monotonic() + 15
        for _ in range(100):
            if block >= 10 or time.monotonic() > deadline:
                break
            dmloop.create("pinrace", file_table(img, size))
            try:
                st = status_fields("pinrace")
                reasons.append(st.get("reason", "?"))
                if st["mode"] == "block":
                    block += 1
                    assert _debugfs_extents("pinrace") == _fiemap_sectors(img, size)
            finally:
                dmloop.remove("pinrace")
    finally:
        stop.set()
        t.join(10)
        os.close(fd)
    assert block, ("no device came up in block mode while the file churned "
                   "(%d creates, reasons %s)" % (len(reasons), sorted(set(reasons))))


def test_writably_mapped_file_is_not_block_mapped(ext4):
    """A writable shared mapping made before the table: file mode, reason
    mmapped (its dirty pages would be written back over the device's)."""
    import mmap
    img = ext4 / "img"
    dmloop.write_random(img, 4 * MiB, seed=99, fsync=True)
    with open(img, "r+b") as f:
        m = mmap.mmap(f.fileno(), 4 * MiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            with loop_device("mapped", img, 4 * MiB):
                st = status_fields("mapped")
                assert (st["mode"], st["reason"]) == ("file", "mmapped"), st
        finally:
            m.close()
    with loop_device("mapped", img, 4 * MiB):
        assert status_fields("mapped")["mode"] == "block"
        # Under the pin a new shared mapping can only be read-only; a reload
        # of the device keeps its block mode (the check is for a new pin).
        with open(img, "r+b") as f:
            m = mmap.mmap(f.fileno(), 4 * MiB, mmap.MAP_SHARED, mmap.PROT_READ)
            try:
                dmloop.reload("mapped", file_table(img, 4 * MiB))
                dmloop.resume("mapped")
                assert status_fields("mapped")["mode"] == "block"
            finally:
                m.close()


# ------------------------------------------------------------ queue flags

def test_file_mode_queue_says_the_truth(ext4):
    """File mode's queue: no polling from 6.10 on (a polled bio is done by
    the worker; 6.1 sets the flag where a target cannot clear it safely),
    rotational as the file's disk is, and with no_direct_io the logical
    block size of the file's disk (512 here), not a direct-I/O alignment.
    fio with io_uring --hipri (IOPOLL) on it completes and verifies (6.1),
    or is refused as unsupported (newer kernels)."""
    img = ext4 / "img"
    dmloop.write_random(img, 16 * MiB, seed=100, fsync=True)
    host = dmloop.scratch_disk(1)
    for opts in (("force_file", "no_direct_io"), ("force_file",)):
        with loop_device("qflags", img, 16 * MiB, opts=opts) as dev:
            if kernel_at_least(6, 10):      # 6.1: see dm-loop.rst, I/O semantics
                assert queue_attr(dev, "io_poll") == "0", opts
            assert queue_attr(dev, "rotational") == queue_attr(host, "rotational"), opts
            assert queue_attr(dev, "logical_block_size") == queue_attr(host, "logical_block_size")
            assert dmloop.read_bytes(dev, 512, 512, direct=True) == \
                dmloop.random_bytes(16 * MiB, 100)[512:1024]
            p = dmloop.run(["fio", "--name=hipri", "--filename=%s" % dev, "--ioengine=io_uring",
                            "--hipri=1", "--direct=1", "--rw=randwrite", "--bs=4k",
                            "--iodepth=8", "--offset=8M", "--size=4M", "--verify=crc32c",
                            "--output-format=terse"], check=False)
            # 6.1 completes polled I/O on a queue that does not poll; newer
            # kernels refuse it (EOPNOTSUPP), as they do on /dev/loop.
            out = p.stdout + p.stderr
            assert p.returncode == 0 or ("Operation not supported" in out and
                                         "verify" not in out), (opts, out)


def test_block_mode_takes_nowait_reads(ext4):
    """A RWF_NOWAIT O_DIRECT read on a block-mode device succeeds (or says
    EAGAIN): without DM_TARGET_NOWAIT dm fails it with EOPNOTSUPP, and
    io_uring punts every such read to a worker thread."""
    img = ext4 / "img"
    dmloop.write_random(img, 4 * MiB, seed=101, fsync=True)
    import mmap
    with loop_device("nowait", img, 4 * MiB) as dev:
        assert status_fields("nowait")["mode"] == "block"
        fd = os.open(str(dev), os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 65536)
        try:
            ok = 0
            for _ in range(20):
                try:
                    n = os.preadv(fd, [buf], MiB, os.RWF_NOWAIT)
                    assert n == 65536
                    ok += 1
                except BlockingIOError:
                    pass
            assert ok, "every RWF_NOWAIT read said EAGAIN"
            assert bytes(buf) == dmloop.random_bytes(4 * MiB, 101)[MiB:MiB + 65536]
        except OSError as e:
            pytest.fail("RWF_NOWAIT read failed: %s" % e)
        finally:
            buf.close()
            os.close(fd)


# ------------------------------------------------------------ the table line

def test_table_with_backslash_reloads_the_same(ext4):
    """A path with a backslash: `dmsetup table` prints it as given, and
    that line, reloaded through dmsetup (libdevmapper escapes the
    backslash, dm_split_args() removes the escape), opens the same file."""
    d = ext4 / "a\\b,c;d=e"
    d.mkdir()
    img = d / "img"
    dmloop.write_random(img, 4 * MiB, seed=102, fsync=True)
    dmloop.create("bslash", "0 8192 loop %s 0" % img)
    try:
        line = dmloop.table("bslash")
        assert line == "0 8192 loop %s 0" % img, line
        dmloop.reload("bslash", line)
        dmloop.resume("bslash")
        assert dmloop.table("bslash") == line
        assert dmloop.target_info("bslash")["path"] == str(img)
    finally:
        dmloop.remove("bslash")
