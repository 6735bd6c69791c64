"""File mode serves every kind of file, correctly and safely under memory pressure.

Each backing store that block mode cannot serve (tmpfs, btrfs, 9p, NFS v4,
sparse, preallocated, reflinked and encrypted files) gets a device that
reports file mode with the right reason, and data goes both ways: written
through the device it is in the file afterwards, written to the file it
reads back through the device.  Then the promises of file mode: direct and
buffered I/O, fio verification, discard and write-zeroes, flush and FUA,
ENOSPC, swap under a memory cgroup, suspend/resume and remove with I/O in
flight.

Scratch disks (Makefile GUEST_DISKS): vda and vdb 2G, vdc 256M.
"""

import contextlib
import errno
import os
import subprocess
import sys
import time
from collections import namedtuple

import pytest

import dmloop
import filemode_util as fm
from safety_util import sparse_block_mode
from filemode_util import MiB

SIZE = 16 * MiB          # round-trip size: 4096 pages, many bios in flight

# A backing store: `dir` to create files in; `kind` how a fresh file is made
# (sparse, fallocated, reflinked); `reason` the status token for a fresh
# file; `io` which path the target takes (direct or buffered); `other_view`
# another path to the same file (the NFS server's copy), or None.
Place = namedtuple("Place", "dir kind reason io other_view")


@contextlib.contextmanager
def place(backing):
    if backing == "tmpfs":
        with fm.tmpfs_mount() as mp:
            # tmpfs has O_DIRECT since 6.6.
            yield Place(mp, "sparse", "no_bdev",
                        "direct" if fm.kernel_at_least(6, 6) else "buffered", None)
    elif backing == "btrfs":
        with dmloop.mounted_fs("btrfs") as mp:
            yield Place(mp, "sparse", "no_bmap", "direct", None)
    elif backing == "9p":
        with fm.ninep_dir() as d:
            yield Place(d, "sparse", "no_bdev", "direct", None)
    elif backing == "nfs4":
        why = fm.nfs_missing()
        if why:
            pytest.skip(why)
        with dmloop.mounted_fs("ext4") as export:
            with fm.nfs_export(export) as mp:
                yield Place(mp, "sparse", "no_bdev", "direct", export)
    elif backing in ("ext4-sparse", "ext4-fallocated", "xfs-fallocated", "xfs-reflinked"):
        fstype, kind = backing.split("-")
        if kind == "fallocated" and sparse_block_mode(fstype):
            pytest.skip("%s gives a preallocated file block mode (test_sparse_xfs.py)" % fstype)
        reason = {"sparse": "hole:0", "fallocated": "unwritten:0", "reflinked": "shared:0"}[kind]
        with dmloop.mounted_fs(fstype) as mp:
            yield Place(mp, kind, reason, "direct", None)
    elif backing == "ext4-encrypted":
        with dmloop.mounted_fs("ext4", mkfs_args=("-O", "encrypt")) as mp:
            d = mp / "secret"
            d.mkdir()
            try:
                fm.fscrypt_encrypt_dir(mp, d)
            except OSError as e:
                pytest.skip("fscrypt refused a v2 policy on ext4 -O encrypt: %s" % e)
            try:
                (d / "probe").touch()
            except OSError as e:
                if e.errno != errno.ENOPKG:
                    raise
                pytest.skip("this kernel lacks the AES-256-XTS/CTS ciphers fscrypt "
                            "needs (ENOPKG creating an encrypted file)")
            (d / "probe").unlink()
            # ext4 does encrypted O_DIRECT only with inline crypto (blk-crypto):
            # without it the target must take the buffered path.
            yield Place(d, "sparse", "encrypted", "buffered", None)
    else:
        raise ValueError(backing)


BACKINGS = ["tmpfs", "btrfs", "9p", "nfs4", "ext4-sparse", "ext4-fallocated",
            "xfs-fallocated", "xfs-reflinked", "ext4-encrypted"]


def prepare(pl, img, size, seed=99):
    """Make the backing file as `pl.kind` says; returns what it reads as."""
    if pl.kind == "sparse":
        fm.make_sparse(img, size)
        return bytes(size)
    if pl.kind == "fallocated":
        fm.make_fallocated(img, size)
        return bytes(size)
    fm.make_reflinked(img, size, seed)
    return dmloop.random_bytes(size, seed)


def assert_io_path(name, io):
    info = fm.target_info(name)
    used, unused = ("direct_ios", "buffered_ios") if io == "direct" else \
                   ("buffered_ios", "direct_ios")
    assert info[used] > 0 and info[unused] == 0, \
        "expected %s I/O only: direct_ios %d, buffered_ios %d" % (
            io, info["direct_ios"], info["buffered_ios"])


@pytest.mark.parametrize("backing", BACKINGS)
def test_device_to_file(backing):
    """A fresh file reads as it was made (holes and preallocated space as
    zeros) through a file-mode device with the right reason; data written
    through the device is in the file afterwards (and, for a reflinked file,
    not in the file it shares blocks with)."""
    with place(backing) as pl:
        img = pl.dir / "img"
        before = prepare(pl, img, SIZE)
        with fm.loop_device("fm-d2f", img, SIZE) as dev:
            st = fm.status_fields("fm-d2f")
            assert (st["mode"], st["reason"]) == ("file", pl.reason), st
            assert dmloop.read_bytes(dev, SIZE, direct=True) == before
            dmloop.write_random(dev, SIZE, seed=11, direct=True)
            assert_io_path("fm-d2f", pl.io)
        dmloop.drop_caches()
        dmloop.verify_random(img, SIZE, seed=11)
        if pl.other_view:
            dmloop.verify_random(pl.other_view / "img", SIZE, seed=11)
        if pl.kind == "reflinked":
            dmloop.verify_random(str(img) + ".orig", SIZE, seed=99)


@pytest.mark.parametrize("backing", BACKINGS)
def test_file_to_device(backing):
    """Data written to the file (every other MiB, the rest left as made:
    holes, unwritten or shared) reads back through the device, and what was
    left reads as before."""
    with place(backing) as pl:
        img = pl.dir / "img"
        want = bytearray(prepare(pl, img, SIZE))
        for i in range(0, SIZE // MiB, 2):
            data = dmloop.random_bytes(MiB, 20 + i)
            dmloop.write_bytes(img, data, offset=i * MiB)
            want[i * MiB:(i + 1) * MiB] = data
        os.sync()
        if pl.kind in ("sparse", "fallocated") and pl.reason.startswith(("hole:", "unwritten:")):
            # The first MiB is data now: the first hole or unwritten block is the next one.
            reason = "%s:%d" % (pl.reason.split(":")[0], MiB // os.statvfs(img).f_bsize)
        elif pl.kind == "reflinked":
            # Writing the first MiB unshared it, but the inode keeps XFS's
            # reflink flag: bmap() says 0 for it (xfs_vm_bmap), FIEMAP not.
            reason = "bmap_mismatch:0"
        else:
            reason = pl.reason
        with fm.loop_device("fm-f2d", img, SIZE) as dev:
            st = fm.status_fields("fm-f2d")
            assert (st["mode"], st["reason"]) == ("file", reason), st
            assert dmloop.read_bytes(dev, SIZE, direct=True) == bytes(want)
            assert_io_path("fm-f2d", pl.io)


def test_no_direct_io_is_buffered():
    """`no_direct_io` makes the target use buffered I/O only, where it would
    otherwise use direct I/O, and the table prints the option back."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, SIZE)
        with fm.loop_device("fm-nd", img, SIZE, opts=("no_direct_io",)) as dev:
            assert dmloop.table("fm-nd").endswith("%s 0 1 no_direct_io" % img)
            dmloop.write_random(dev, SIZE, seed=12, direct=True)
            dmloop.verify_random(dev, SIZE, seed=12, direct=True)
            assert_io_path("fm-nd", "buffered")
        dmloop.drop_caches()
        dmloop.verify_random(img, SIZE, seed=12)


def test_offset_in_file_mode():
    """With an offset that is not a filesystem block multiple, data lands at
    that offset of the file and the bytes before it are untouched."""
    offset = 4096 + 3 * 512
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        dmloop.write_random(img, offset, seed=13, fsync=True)
        with open(img, "r+b") as f:
            f.truncate(offset + SIZE)
        with fm.loop_device("fm-off", img, SIZE, offset=offset) as dev:
            assert fm.status_fields("fm-off")["mode"] == "file"
            dmloop.write_random(dev, SIZE, seed=14, direct=True)
        dmloop.drop_caches()
        dmloop.verify_random(img, SIZE, seed=14, offset=offset)
        dmloop.verify_random(img, offset, seed=13)


@pytest.mark.parametrize("engine", ["libaio-direct", "psync-buffered"])
def test_fio_verify(engine):
    """fio random writes with crc32c verification find no error: through
    the target's direct path (libaio, O_DIRECT on the device), and through
    its buffered path (psync through the device's page cache, verified in a
    second run after dropping the caches so the reads reach the target)."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, 64 * MiB)
        opts = () if engine == "libaio-direct" else ("no_direct_io",)
        with fm.loop_device("fm-fio", img, 64 * MiB, opts=opts) as dev:
            common = ["--rw=randwrite", "--bsrange=4k-64k", "--size=32M",
                      "--verify=crc32c", "--verify_fatal=1", "--randrepeat=1"]
            if engine == "libaio-direct":
                out = fm.fio(dev, "--ioengine=libaio", "--direct=1", "--iodepth=16",
                             "--verify_backlog=128", *common).stdout
                assert fm.fio_errors(out) == 0, out
            else:
                out = fm.fio(dev, "--ioengine=psync", "--direct=0", "--end_fsync=1",
                             "--do_verify=0", *common).stdout
                assert fm.fio_errors(out) == 0, out
                dmloop.drop_caches()
                out = fm.fio(dev, "--ioengine=psync", "--direct=0", "--verify_only=1",
                             *common).stdout
                assert fm.fio_errors(out) == 0, out
                assert "verify" in out or "read" in out, out
            info = fm.target_info("fm-fio")
            assert info["errors"] == 0, info
            assert_io_path("fm-fio", "direct" if engine == "libaio-direct" else "buffered")


def punch_hole_works(directory):
    """Whether the filesystem of `directory` punches holes (fallocate -p)."""
    probe = directory / "punch-probe"
    try:
        dmloop.write_random(probe, 64 * 1024, seed=1, fsync=True)
        return dmloop.run(["fallocate", "-p", "-o", "0", "-l", "4096", str(probe)],
                          check=False).returncode == 0
    finally:
        probe.unlink()


@pytest.mark.parametrize("backing", ["ext4-sparse", "tmpfs", "nfs4", "9p"])
def test_discard_and_write_zeroes(backing):
    """Where the file can have holes punched, a discard on the device
    punches one: the file's allocated blocks shrink and the range reads as
    zeros.  Where it cannot (9p has no fallocate, nor NFS before v4.2), the
    device does not offer discard.  Write-zeroes (blkdiscard -z) reads as
    zeros everywhere, and the data around both ranges is untouched."""
    with place(backing) as pl:
        can_punch = punch_hole_works(pl.dir)
        assert can_punch or backing in ("9p", "nfs4"), "%s cannot punch holes" % backing
        img = pl.dir / "img"
        fm.make_sparse(img, SIZE)
        with fm.loop_device("fm-disc", img, SIZE) as dev:
            dmloop.write_random(dev, SIZE, seed=15, direct=True, fsync=True)
            want = bytearray(dmloop.random_bytes(SIZE, 15))
            discard_max = int(fm.queue_attr(dev, "discard_max_bytes"))
            assert (discard_max > 0) == can_punch, discard_max
            if can_punch:
                full = fm.allocated_bytes(img)
                assert full >= SIZE, full
                dmloop.run(["blkdiscard", "-o", str(4 * MiB), "-l", str(8 * MiB), str(dev)])
                os.sync()
                after = fm.allocated_bytes(img)
                assert after <= full - 8 * MiB, "discard freed too little: %d -> %d" % (
                    full, after)
                want[4 * MiB:12 * MiB] = bytes(8 * MiB)
            else:
                p = dmloop.run(["blkdiscard", "-o", str(4 * MiB), "-l", str(8 * MiB),
                                str(dev)], check=False)
                assert p.returncode != 0, "discard claimed to work on %s" % backing
            assert dmloop.read_bytes(dev, SIZE, direct=True) == bytes(want)

            dmloop.run(["blkdiscard", "-z", "-o", str(MiB), "-l", str(MiB), str(dev)])
            want[MiB:2 * MiB] = bytes(MiB)
            assert dmloop.read_bytes(dev, SIZE, direct=True) == bytes(want)
            assert fm.target_info("fm-disc")["errors"] == 0
        dmloop.drop_caches()
        assert dmloop.read_bytes(img, SIZE) == bytes(want)
        if pl.other_view:
            assert dmloop.read_bytes(pl.other_view / "img", SIZE) == bytes(want)


@contextlib.contextmanager
def no_background_writeback():
    """Keep the kernel from writing dirty pages back on its own, so that
    only an explicit flush can put them on disk."""
    keys = ("dirty_writeback_centisecs", "dirty_expire_centisecs")
    old = {k: open("/proc/sys/vm/" + k).read() for k in keys}
    try:
        for k in keys:
            with open("/proc/sys/vm/" + k, "w") as f:
                f.write("0\n" if k == "dirty_writeback_centisecs" else "360000\n")
        yield
    finally:
        for k, v in old.items():
            with open("/proc/sys/vm/" + k, "w") as f:
                f.write(v)


@contextlib.contextmanager
def buffered_device_on_written_file(name, mp, size):
    """A buffered file-mode device over a fully written ext4 file, and the
    file's extents on the disk (taken before the device writes anything)."""
    img = mp / "img"
    dmloop.write_random(img, size, seed=16, fsync=True)
    extents = fm.fiemap(img)
    with fm.loop_device(name, img, size, opts=("force_file", "no_direct_io")) as dev:
        yield img, dev, extents


@pytest.mark.parametrize("how", ["fsync", "fua"])
def test_flush_reaches_disk(how):
    """Buffered file mode: once fsync on the device returns (a flush), or
    an O_DSYNC O_DIRECT write returns (FUA), the data is on the host disk
    and a fresh O_DIRECT reader of the file sees it; before, it was not."""
    disk = dmloop.scratch_disk(0)
    size = 4 * MiB
    with dmloop.mounted_fs("ext4", dev=disk) as mp, no_background_writeback():
        with buffered_device_on_written_file("fm-flush", mp, size) as (img, dev, extents):
            old = dmloop.random_bytes(size, 16)
            new = dmloop.random_bytes(size, 17)
            if how == "fsync":
                dmloop.write_bytes(dev, new, direct=True)
                assert fm.read_on_disk(disk, extents, 0, size) == old, \
                    "written back before any flush: this test proves nothing"
                flushes = fm.status_fields("fm-flush")["flushes"]
                fd = os.open(dev, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                assert fm.status_fields("fm-flush")["flushes"] > flushes
            else:
                assert fm.queue_attr(dev, "fua") == "1"
                fd = os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
                buf = __import__("mmap").mmap(-1, size)
                try:
                    buf[:] = new
                    assert os.pwrite(fd, buf, 0) == size
                finally:
                    buf.close()
                    os.close(fd)
            assert fm.read_on_disk(disk, extents, 0, size) == new
            assert dmloop.read_bytes(img, size, direct=True) == new


def fill_filesystem(mp, leave):
    """Allocate all but about `leave` bytes of the filesystem at `mp`."""
    st = os.statvfs(mp)
    free = st.f_bavail * st.f_frsize
    fd = os.open(mp / "filler", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, max(free - leave, 0))
    finally:
        os.close(fd)


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_enospc_fails_writes(io):
    """Over a sparse file on a nearly full filesystem, writes past the free
    space fail with an I/O error (ENOSPC or EIO) instead of hanging or being
    dropped; the device can be removed afterwards and the filesystem is
    still usable."""
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(2), mkfs_args=("-m", "0")) as mp:
        fill_filesystem(mp, 8 * MiB)
        img = mp / "img"
        fm.make_sparse(img, 64 * MiB)
        opts = () if io == "direct" else ("no_direct_io",)
        with fm.loop_device("fm-nospc", img, 64 * MiB, opts=opts) as dev:
            # The writer writes with O_DIRECT to the device in both cases: the
            # error must come back to it, not vanish in a page cache.
            t0 = time.monotonic()
            p = dmloop.run(["dd", "if=/dev/urandom", "of=%s" % dev, "bs=1M", "count=64",
                            "oflag=direct"], check=False, timeout=300)
            assert p.returncode != 0, "64 MiB fit into 8 MiB of free space?\n" + p.stderr
            assert "No space left on device" in p.stderr or \
                "Input/output error" in p.stderr, p.stderr
            assert time.monotonic() - t0 < 240
            assert fm.target_info("fm-nospc")["errors"] > 0
        (mp / "filler").unlink()
        dmloop.write_random(mp / "after", MiB, seed=18, fsync=True)


def vmstat(key):
    with open("/proc/vmstat") as f:
        return next(int(v) for k, v in (line.split() for line in f) if k == key)


def test_swap_under_memory_pressure():
    """A file-mode device over a sparse ext4 file serves as swap for a
    process in a memory cgroup allocating three times its limit: the process
    finishes in bounded time with its data intact, nothing is OOM-killed and
    no task hangs; then swapoff and remove work."""
    limit, alloc = 16 * MiB, 48 * MiB
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(1)) as mp:
        img = mp / "swap"
        fm.make_sparse(img, 512 * MiB)
        with fm.loop_device("fm-swap", img, 512 * MiB) as dev:
            assert fm.status_fields("fm-swap")["reason"] == "hole:0"
            dmloop.run(["mkswap", str(dev)])
            dmloop.run(["swapon", "-p", "10", str(dev)])
            pos = dmloop.kmsg_pos()
            try:
                with fm.memory_cgroup("dmloop-swap", limit) as cg:
                    script = (
                        "import mmap, struct, sys\n"
                        "n = %d // 4096\n"
                        "m = mmap.mmap(-1, n * 4096)\n"
                        "for i in range(n): m[i * 4096:i * 4096 + 8] = struct.pack('Q', i * 7919)\n"
                        "bad = [i for i in range(n) if struct.unpack_from('Q', m, i * 4096)[0]"
                        " != i * 7919]\n"
                        "sys.exit(1 if bad else 0)\n" % alloc)
                    child = "echo $$ > %s/cgroup.procs && exec %s -c \"$0\"" % (
                        cg, sys.executable)
                    pswpout = vmstat("pswpout")
                    t0 = time.monotonic()
                    p = subprocess.run(["sh", "-c", child, script], capture_output=True,
                                       text=True, timeout=900)
                    took = time.monotonic() - t0
                    events = fm.cgroup_events(cg)
                    swapped = (vmstat("pswpout") - pswpout) * 4096
                assert p.returncode == 0, "allocating process failed (%d, %.0f s): %s" % (
                    p.returncode, took, p.stderr)
                assert events.get("oom_kill", 0) == 0, events
                assert events.get("max", 0) > 0, "the limit was never reached: %s" % events
                assert swapped >= alloc - limit, "only %d bytes swapped out" % swapped
                st = fm.status_fields("fm-swap")
                assert st["writes"] > 0 and st["reads"] > 0, st
                lines = dmloop.kmsg_since(pos)
                assert not [ln for ln in lines if "oom-kill" in ln or "Out of memory" in ln], lines
            finally:
                dmloop.run(["swapoff", str(dev)], timeout=600)
            assert fm.target_info("fm-swap")["errors"] == 0


def test_suspend_resume_and_remove_with_io_in_flight():
    """fio verification running on the device while it is suspended and
    resumed over and over (with and without --noflush) finds no lost or
    corrupted write; removing the open device is refused with EBUSY while
    I/O is in flight, and succeeds once fio has finished."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, 32 * MiB)
        with fm.loop_device("fm-susp", img, 32 * MiB) as dev:
            job = fm.fio(dev, "--ioengine=libaio", "--direct=1", "--iodepth=32",
                         "--rw=randwrite", "--bsrange=4k-64k", "--size=32M",
                         "--verify=crc32c", "--verify_fatal=1", "--verify_backlog=64",
                         # At most 4 MiB/s: fio runs for >= 8 s however idle
                         # the machine, long enough for the suspend cycles.
                         "--rate=4m", background=True)
            # fio closes and reopens the device between phases: hold it open
            # ourselves so that the remove below always meets an open device.
            holder = os.open(dev, os.O_RDONLY)
            cycles = 0
            refused = None
            try:
                time.sleep(2)
                while job.poll() is None and cycles < 20:
                    dmloop.suspend("fm-susp", *(["--noflush"] if cycles % 2 else []))
                    time.sleep(0.1)
                    dmloop.resume("fm-susp")
                    cycles += 1
                    if refused is None:
                        refused = dmloop.dmsetup("remove", "fm-susp", check=False)
                    time.sleep(0.3)
            finally:
                out, err = job.communicate(timeout=900)
                os.close(holder)
            assert job.returncode == 0, out + err
            assert fm.fio_errors(out) == 0, out
            assert cycles >= 5, "fio finished too early to test anything (%d cycles)" % cycles
            assert refused.returncode != 0 and "busy" in refused.stderr.lower(), refused
            assert fm.target_info("fm-susp")["errors"] == 0
            dmloop.remove("fm-susp", retries=1)
            assert not dmloop.exists("fm-susp")
