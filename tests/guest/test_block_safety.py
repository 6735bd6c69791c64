"""Block mode never maps what bmap cannot vouch for, and pins what it maps.

DESIGN.md sections 2 and 3, proved on ext4 and XFS: stale blocks under
unwritten extents are never readable through a device; a reflinked file gets
file mode, so writing the device never changes the file it shares blocks
with; while a block-mode device exists its backing file refuses every
operation that could move or free its blocks (each errno as 6.1 returns it),
the filesystem cannot be unmounted, and another swapfile or dm-loop device
cannot take the file; a reload keeps the file pinned without losing I/O,
and removing the device releases everything.
"""

import contextlib
import errno
import mmap
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import dmloop
from safety_util import (
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, FIEMAP_EXTENT_SHARED,
    FIEMAP_EXTENT_UNWRITTEN, UNMAPPED_MSG, MiB, assert_refused, block_size, dedupe, fallocate,
    ficlone, ficlonerange, fiemap, is_pinned, module_figures, mount_source, read_host_blocks,
    debugfs_info, sparse_block_mode, status_fields, status_lines, table, table_error_re, umount2,
    write_file, write_probe)

SECRET = b"dm-loop SECRET! "          # 16 bytes, repeated over the free space

# Small filesystems, quick to fill.  mkfs.xfs (xfsprogs >= 5.19) refuses
# anything under 300 MiB unless it runs under fstests, which it recognises
# by these three variables.
SMALL_MKFS = {
    "ext4": ["mkfs.ext4", "-F", "-q", "-b", "4096", "-m", "0", "{dev}", "48M"],
    "xfs": ["mkfs.xfs", "-f", "-q", "-d", "size=64m", "{dev}"],
}
# The whole 256 MiB disk (room for dmloop.fragment_free_space's fillers).
DISK_MKFS = {
    "ext4": ["mkfs.ext4", "-F", "-q", "-b", "4096", "-m", "0", "{dev}"],
    "xfs": ["mkfs.xfs", "-f", "-q", "{dev}"],
}
XFS_SMALL_ENV = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}


@contextlib.contextmanager
def small_fs(fstype, disk, mkfs=SMALL_MKFS):
    dev = dmloop.scratch_disk(disk)
    if not dmloop.filesystem_available(fstype):
        dmloop.modprobe(dmloop.FS_MODULE[fstype])
    mp = Path(tempfile.mkdtemp(prefix="dmloop-small-%s-" % fstype, dir="/tmp"))
    dmloop.run([a.format(dev=dev) for a in mkfs[fstype]],
               env=dict(os.environ, **XFS_SMALL_ENV))
    dmloop.run(["mount", dev, str(mp)])
    try:
        yield mp
    finally:
        dmloop.umount(mp)
        os.rmdir(mp)


@pytest.fixture(scope="module")
def ext4_fs():
    """ext4 (4 KiB blocks) on the first scratch disk, shared by the tests
    below that need no filesystem of their own (each uses its own files)."""
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(0), mkfs_args=("-b", "4096")) as mp:
        yield mp


@pytest.fixture(scope="module")
def xfs_fs():
    """XFS (reflink on, mkfs.xfs's default) on the second scratch disk, shared."""
    with dmloop.mounted_fs("xfs", dev=dmloop.scratch_disk(1)) as mp:
        yield mp


def shared_fs(request, fstype):
    return request.getfixturevalue(fstype + "_fs")


# ------------------------------------------------------------ unwritten extents

def fill_up(path, pattern):
    """Take all the free space of the filesystem that holds `path` with
    the file `path`, `pattern` over and over, fsynced (the file is kept)."""
    chunk = pattern * (MiB // len(pattern))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for piece in (chunk, pattern * (4096 // len(pattern))):
            while True:
                try:
                    os.write(fd, piece)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


def fill_free_space(mp, pattern):
    """Write `pattern` over all the free space of `mp`, sync, delete it again:
    every block the filesystem hands out next held `pattern` on disk."""
    fill_up(mp / "secret", pattern)
    os.unlink(mp / "secret")
    dmloop.sync()


@pytest.mark.parametrize("fstype,disk", [("ext4", 2), ("xfs", 3)])
def test_unwritten_extents_never_show_stale_blocks(fstype, disk):
    """A preallocated (unwritten) file over blocks that still hold a deleted
    secret: auto mode falls back to file mode naming the first unwritten
    block, force_file reads zeros, require_block is refused (and unpins); in
    no mode does a single byte of the secret come through the device."""
    with small_fs(fstype, disk) as mp:
        fill_free_space(mp, SECRET)
        img = mp / "img"
        size, written = 8 * MiB, MiB
        fd = os.open(img, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        dmloop.write_random(img, written, seed=11, fsync=True)

        # The test means something only if the secret is really under the file.
        unwritten = [e for e in fiemap(img) if e.flags & FIEMAP_EXTENT_UNWRITTEN]
        assert sum(e.length for e in unwritten) >= size - written - MiB, fiemap(img)
        raw = read_host_blocks(mount_source(mp), unwritten)
        assert raw.count(SECRET) * len(SECRET) > len(raw) // 2, \
            "the secret should be on disk under the unwritten extents"

        first_unwritten = written // block_size(mp)
        want = dmloop.random_bytes(written, 11) + bytes(size - written)
        # XFS: block mode over the unwritten extents (test_sparse_xfs.py)
        sparse = sparse_block_mode(fstype)
        auto = ("block", r"holes:0/unwritten:\d+") if sparse else \
            ("file", "unwritten:%d" % first_unwritten)
        for opts, mode in [((), auto), (("force_file",), ("file", "forced"))] + \
                [(("require_block",), auto)] * sparse:
            dmloop.create("leak", table(img, size, opts=opts))
            try:
                st = status_fields("leak")
                assert st["mode"] == mode[0] and re.fullmatch(mode[1], st["reason"]), st
                for direct in (True, False):
                    got = dmloop.read_bytes("/dev/mapper/leak", size, direct=direct)
                    assert SECRET not in got, "secret readable through the device (%s)" % (opts,)
                    assert got == want
            finally:
                dmloop.remove("leak")

        if sparse:
            return
        lines = assert_refused("leak", table(img, size, opts=("require_block",)),
                               UNMAPPED_MSG, "EINVAL")
        assert any("%s: block mode required, not possible: unwritten:%d" % (img, first_unwritten)
                   in l for l in lines), lines
        assert write_probe(img) is None, "a refused require_block table left the file pinned"


# ------------------------------------------------------------ reflink

def xfs_reflink_enabled(mp):
    out = dmloop.run(["xfs_info", str(mp)]).stdout
    return "reflink=1" in out


@pytest.mark.parametrize("mapped", ["copy", "original"])
def test_reflinked_file_never_writes_the_other(xfs_fs, mapped):
    """XFS with reflink: after `cp --reflink=always`, either side of the
    clone gets file mode (FIEMAP flags its extents shared) and writes
    through the device unshare the blocks: the other file's bytes never
    change."""
    mp = xfs_fs
    if not xfs_reflink_enabled(mp):
        pytest.skip("mkfs.xfs made a filesystem without reflink")
    size = 4 * MiB
    orig, copy = mp / ("original-" + mapped), mp / ("copy-" + mapped)
    write_file(orig, size, seed=21)
    dmloop.run(["cp", "--reflink=always", str(orig), str(copy)])
    dmloop.sync()
    assert all(e.flags & FIEMAP_EXTENT_SHARED for e in fiemap(copy)), fiemap(copy)

    target, other = (copy, orig) if mapped == "copy" else (orig, copy)
    assert_refused("rl", table(target, size, opts=("require_block",)),
                   UNMAPPED_MSG, "EINVAL")
    dev = dmloop.create("rl", table(target, size))
    try:
        st = status_fields("rl")
        assert (st["mode"], st["reason"]) == ("file", "shared:0"), st
        dmloop.write_random(dev, size, seed=22, direct=True, fsync=True)
    finally:
        dmloop.remove("rl")
    dmloop.drop_caches()
    dmloop.verify_random(other, size, seed=21)
    dmloop.verify_random(target, size, seed=22)


# ------------------------------------------------------------ pinning

def _open(path, flags=os.O_RDWR):
    return os.open(str(path), flags)


def op_write(img, other):
    fd = _open(img, os.O_WRONLY)
    try:
        os.pwrite(fd, b"w" * 4096, 0)
    finally:
        os.close(fd)


def op_write_direct(img, other):
    fd = _open(img, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    try:
        buf.write(b"d" * 4096)
        os.pwritev(fd, [buf], 4096)
    finally:
        buf.close()
        os.close(fd)


def op_append(img, other):
    fd = _open(img, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"appended\n")
    finally:
        os.close(fd)


def op_truncate_shrink(img, other):
    os.truncate(img, os.stat(img).st_size - 4096)


def _falloc(mode, offset, length):
    def op(img, other):
        fd = _open(img)
        try:
            fallocate(fd, mode, offset, length)
        finally:
            os.close(fd)
    return op


def _with_fds(fn):
    def op(img, other):
        dst, src = _open(img), _open(other)
        try:
            fn(dst, src)
        finally:
            os.close(dst)
            os.close(src)
    return op


def op_unlink(img, other):
    os.unlink(img)


def op_rename(img, other):
    os.rename(img, img.with_name("renamed"))


def op_rename_over(img, other):
    os.rename(other, img)


def op_mmap_shared_write(img, other):
    fd = _open(img)
    try:
        m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[0:1] = b"m"
        m.flush()
        m.close()
    finally:
        os.close(fd)


# (id, operation, errno while pinned, filesystems): each must be refused while
# a block-mode device exists and work after it is removed.  Reflink ioctls are
# XFS only: ext4 has no reflink (EOPNOTSUPP, pinned or not).
REFUSED = [
    ("write", op_write, errno.ETXTBSY, "ext4 xfs"),
    ("write_odirect", op_write_direct, errno.ETXTBSY, "ext4 xfs"),
    ("write_append", op_append, errno.ETXTBSY, "ext4 xfs"),
    ("truncate_shrink", op_truncate_shrink, errno.ETXTBSY, "ext4 xfs"),
    ("fallocate_extend", _falloc(0, 0, 12 * MiB), errno.ETXTBSY, "ext4 xfs"),
    ("fallocate_punch_hole", _falloc(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 65536),
     errno.ETXTBSY, "ext4 xfs"),
    ("fallocate_zero_range", _falloc(FALLOC_FL_ZERO_RANGE, 0, 65536), errno.ETXTBSY, "ext4 xfs"),
    ("copy_file_range_into", _with_fds(lambda d, s: os.copy_file_range(s, d, 65536, 0, 0)),
     errno.ETXTBSY, "ext4 xfs"),
    # Out of it, too: on XFS that would share the pinned blocks with another file.
    ("copy_file_range_from", _with_fds(lambda d, s: os.copy_file_range(d, s, 65536, 0, 0)),
     errno.ETXTBSY, "ext4 xfs"),
    ("ficlone_into", _with_fds(lambda d, s: ficlone(d, s)), errno.ETXTBSY, "xfs"),
    ("ficlonerange_into", _with_fds(lambda d, s: ficlonerange(d, s, 0, 65536, 0)),
     errno.ETXTBSY, "xfs"),
    ("ficlone_from", _with_fds(lambda d, s: ficlone(s, d)), errno.ETXTBSY, "xfs"),
    ("dedupe_into", _with_fds(lambda d, s: dedupe(s, 0, 65536, d, 0)), errno.ETXTBSY, "xfs"),
    ("dedupe_from", _with_fds(lambda d, s: dedupe(d, 0, 65536, s, 0)), errno.ETXTBSY, "xfs"),
    ("unlink", op_unlink, errno.EPERM, "ext4 xfs"),
    ("rename", op_rename, errno.EPERM, "ext4 xfs"),
    ("rename_over", op_rename_over, errno.EPERM, "ext4 xfs"),
    ("mmap_shared_write", op_mmap_shared_write, errno.ETXTBSY, "ext4 xfs"),
]

PIN_SIZE = 256 * 1024
PIN_SECTORS = PIN_SIZE // 512


def op_read(img, other):
    dmloop.verify_random(img, PIN_SIZE, seed=31)
    dmloop.verify_random(img, PIN_SIZE, seed=31, direct=True)


def op_stat(img, other):
    st = os.stat(img)
    assert st.st_size == PIN_SIZE and st.st_blocks * 512 >= PIN_SIZE


ALLOWED = [("read", op_read), ("stat", op_stat)]


class PinnedFiles:
    """One block-mode device per filesystem whose table has a target per
    case, each over its own file, so that every operation meets a freshly
    pinned file of its own and the whole set costs one create and one remove."""

    def __init__(self, mp, fstype):
        self.fstype, self.name = fstype, "pin-" + fstype
        self.dev = Path("/dev/mapper") / self.name
        self.cases = ([n for n, _, _, fss in REFUSED if fstype in fss.split()]
                      + [n for n, _ in ALLOWED] + ["grow"])
        self.files = {}
        lines = []
        for i, case in enumerate(self.cases):
            img, other = mp / ("img-" + case), mp / ("other-" + case)
            # other has the same bytes on other blocks, so dedupe has work to do.
            write_file(img, PIN_SIZE, seed=31)
            write_file(other, PIN_SIZE, seed=31)
            self.files[case] = (img, other, i * PIN_SIZE)
            lines.append("%d %d loop %s 0" % (i * PIN_SECTORS, PIN_SECTORS, img))
        dmloop.create(self.name, "\n".join(lines))
        # Created inside the first test that asks for it: keep conftest from
        # taking it for that test's leftover.  The fixture removes it.
        dmloop.created_devices.remove(self.name)
        self.removed = False
        try:
            st = status_lines(self.name)
            assert [s["mode"] for s in st] == ["block"] * len(self.cases), st
        except BaseException:
            self.remove()
            raise

    def get(self, case):
        if self.removed:
            pytest.fail("%s was removed by an earlier test: run the file in order" % self.name)
        return self.files[case]

    def assert_intact(self, case):
        """The file is where it was, with its bytes, and the device still maps them."""
        img, _, dev_offset = self.files[case]
        assert os.stat(img).st_size == PIN_SIZE
        dmloop.verify_random(img, PIN_SIZE, seed=31)
        dmloop.verify_random(self.dev, PIN_SIZE, seed=31, offset=dev_offset, direct=True)

    def remove(self):
        if not self.removed:
            dmloop.remove(self.name)
            self.removed = True


def _pinned_files(request, fstype):
    files = PinnedFiles(shared_fs(request, fstype), fstype)
    yield files
    files.remove()


# One fixture per filesystem (not one parametrized fixture): both sets stay
# up for the whole module whatever order the cases run in.
@pytest.fixture(scope="module")
def pinned_ext4(request):
    yield from _pinned_files(request, "ext4")


@pytest.fixture(scope="module")
def pinned_xfs(request):
    yield from _pinned_files(request, "xfs")


def pinned_set(request, fstype):
    return request.getfixturevalue("pinned_" + fstype)


def _pin_cases(names):
    return [pytest.param(fs, name, id="%s-%s" % (fs, name))
            for name, fss in names for fs in fss.split()]


@pytest.mark.parametrize("fstype,case", _pin_cases((n, f) for n, _, _, f in REFUSED))
def test_pinned_file_refuses(request, fstype, case):
    """While a block-mode device maps the file, the operation fails with the
    errno 6.1 gives an active swapfile and changes nothing (the file's
    bytes, size and mapping)."""
    pinned = pinned_set(request, fstype)
    img, other, _ = pinned.get(case)
    _, op, err, _ = next(r for r in REFUSED if r[0] == case)
    with pytest.raises(OSError) as e:
        op(img, other)
    assert e.value.errno == err, "%s instead of %s" % (
        errno.errorcode.get(e.value.errno), errno.errorcode[err])
    pinned.assert_intact(case)


@pytest.mark.parametrize("fstype,case", _pin_cases((n, "ext4 xfs") for n, _ in ALLOWED))
def test_pinned_file_allows(request, fstype, case):
    """Reading and stat()ing the backing file still work while it is pinned."""
    pinned = pinned_set(request, fstype)
    img, other, _ = pinned.get(case)
    dict(ALLOWED)[case](img, other)
    pinned.assert_intact(case)


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_pinned_file_grows_but_never_shrinks(request, fstype):
    """Growing truncate is not blocked by S_SWAPFILE (DESIGN.md section 3):
    it works, the mapped bytes stay, and shrinking back is refused."""
    pinned = pinned_set(request, fstype)
    img, _, dev_offset = pinned.get("grow")
    os.truncate(img, PIN_SIZE + MiB)
    assert os.stat(img).st_size == PIN_SIZE + MiB
    with pytest.raises(OSError) as e:
        os.truncate(img, PIN_SIZE)
    assert e.value.errno == errno.ETXTBSY
    dmloop.verify_random(img, PIN_SIZE, seed=31)
    dmloop.verify_random(pinned.dev, PIN_SIZE, seed=31, offset=dev_offset, direct=True)


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_removal_unpins_every_file(request, fstype):
    """Once the device is removed, every operation refused above works on
    the same files, and shrinking the grown file back works."""
    pinned = pinned_set(request, fstype)
    pinned.get("grow")
    pinned.remove()
    failed = []
    for name, op, _, fss in REFUSED:
        if pinned.fstype in fss.split():
            img, other, _ = pinned.files[name]
            try:
                op(img, other)
            except OSError as e:
                failed.append("%s: %s" % (name, e))
    os.truncate(pinned.files["grow"][0], PIN_SIZE)
    assert not failed, "still refused after removal:\n" + "\n".join(failed)


# ------------------------------------------------------------ online defrag

DEFRAG = {"ext4": ["e4defrag", "-v"], "xfs": ["xfs_fsr", "-v"]}


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_online_defrag_cannot_move_pinned_blocks(fstype):
    """e4defrag (EXT4_IOC_MOVE_EXT) and xfs_fsr (XFS_IOC_SWAPEXT) leave a
    pinned file's layout and bytes alone; after removal they defragment it."""
    # A fresh filesystem: on the suite's shared XFS (6.12, 7.2) space that
    # earlier tests freed came back while the file was being written (XFS
    # frees deleted inodes' blocks in the background) and the file was not
    # fragmented.
    with small_fs(fstype, 3, mkfs=DISK_MKFS) as mp:
        _defrag_pinned(mp, DEFRAG[fstype])


def _defrag_pinned(mp, tool):
    blk = block_size(mp)
    nblocks = 32
    img, size = mp / "img-defrag", nblocks * blk
    # One block at a time over single free blocks, with free space left all
    # around once the fillers go: what a defragmenter works on.  (Allocating
    # img and a spacer file in turn is not enough: 6.12's XFS merged those
    # into 4 extents.)
    dmloop.write_fragmented(mp, img, dmloop.random_bytes(size, 41), blk)
    layout = fiemap(img)
    assert len(layout) > nblocks // 2, "img should be fragmented: %s" % (layout,)

    dev = dmloop.create("defrag", table(img, size))
    try:
        assert status_fields("defrag")["extents"] == len(layout)
        p = dmloop.run(tool + [str(img)], check=False)
        assert fiemap(img) == layout, "defrag moved pinned blocks:\n%s%s" % (p.stdout, p.stderr)
        dmloop.verify_random(img, size, seed=41)
        dmloop.verify_random(dev, size, seed=41, direct=True)
    finally:
        dmloop.remove("defrag")

    p = dmloop.run(tool + [str(img)], check=False)
    assert len(fiemap(img)) < len(layout) // 2, \
        "defrag did nothing once unpinned:\n%s%s" % (p.stdout, p.stderr)
    dmloop.drop_caches()
    dmloop.verify_random(img, size, seed=41)


# ------------------------------------------------------------ unmount

@pytest.mark.parametrize("fstype,disk", [("ext4", 2), ("xfs", 3)])
def test_filesystem_cannot_be_unmounted_under_device(fstype, disk):
    """A device holds its backing file open, in either mode: umount(2)
    fails with EBUSY while a block-mode or a file-mode device exists, and
    succeeds once both are removed."""
    with small_fs(fstype, disk) as mp:
        for name in ("block", "file"):
            write_file(mp / name, MiB, seed=51)

        def assert_busy(mode):
            with pytest.raises(OSError) as e:
                umount2(mp)
            assert e.value.errno == errno.EBUSY, "with the %s-mode device" % mode
            assert dmloop.is_mounted(mp)
            assert status_fields("um-" + mode)["mode"] == mode
            dmloop.verify_random("/dev/mapper/um-" + mode, MiB, seed=51, direct=True)

        try:
            dmloop.create("um-block", table(mp / "block", MiB))
            assert_busy("block")
            dmloop.create("um-file", table(mp / "file", MiB, opts=("force_file",)))
            dmloop.remove("um-block")
            assert_busy("file")
            dmloop.remove("um-file")
        finally:
            for name in ("um-block", "um-file"):
                if name in dmloop.created_devices:
                    dmloop.remove(name)
        umount2(mp)
        assert not dmloop.is_mounted(mp)
        dmloop.run(["mount", dmloop.scratch_disk(disk), str(mp)])    # for small_fs's umount


# ------------------------------------------------------------ reload

def fio_verify_cmd(dev, size):
    return ["fio", "--name=reload", "--filename=%s" % dev, "--rw=randwrite", "--bs=4k",
            "--direct=1", "--ioengine=psync", "--size=%d" % size, "--verify=crc32c",
            "--do_verify=1", "--verify_fatal=1", "--randrepeat=1", "--verify_state_save=0",
            "--loops=%d" % FIO_LOOPS]


# fio writes and verifies the device FIO_LOOPS times (long enough for
# several reloads however fast the machine); the test reloads at most
# MAX_RELOADS times, then lets fio finish.
FIO_LOOPS = 4
MAX_RELOADS = 3


def test_reload_under_io_keeps_file_pinned(ext4_fs):
    """`dmsetup reload` + `resume` of the same table while fio writes and
    verifies: after every swap the file is still pinned (the old table's
    destructor did not unpin the new one), fio's crc32c verify finds every
    block, the file holds what the device holds, and remove unpins."""
    img, size = ext4_fs / "img-reload-io", 8 * MiB
    write_file(img, size, seed=61)
    tbl = table(img, size)
    blocks_before = module_figures()["block_devices"]
    dev = dmloop.create("rl", tbl)
    fio = subprocess.Popen(fio_verify_cmd(dev, size), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while debugfs_info("rl")["writes"] == 0 and fio.poll() is None:
            assert time.monotonic() < deadline, "fio never started writing"
            time.sleep(0.05)
        reloads = 0
        while fio.poll() is None and reloads < MAX_RELOADS:
            dmloop.reload("rl", tbl)
            dmloop.resume("rl")
            if fio.poll() is None:
                reloads += 1
            assert is_pinned(img), "file unpinned after reload %d" % reloads
            assert module_figures()["block_devices"] == blocks_before + 1
            assert debugfs_info("rl")["mode"] == "block"
        out = fio.communicate(timeout=600)[0]
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, out
    assert reloads >= 3, "fio ended after %d reloads: make it longer\n%s" % (reloads, out)
    on_device = dmloop.sha256_of(dev, size, direct=True)
    dmloop.remove("rl")
    assert not is_pinned(img)
    # Read through the page cache: removal must have dropped what the
    # pin probes above cached while the device wrote underneath.
    assert dmloop.sha256_of(img, size) == on_device
    assert module_figures()["block_devices"] == blocks_before


def test_reload_with_new_offset_on_same_file(ext4_fs):
    """Reloading the device over another range of the same file works (no
    EBUSY against itself), maps the new range, and keeps the file pinned;
    removing the device unpins it."""
    img, size, dev_size = ext4_fs / "img-reload-offset", 4 * MiB, 2 * MiB
    write_file(img, size, seed=62)
    data = dmloop.random_bytes(size, 62)
    blocks_before = module_figures()["block_devices"]
    dev = dmloop.create("rl", table(img, dev_size))
    try:
        for offset in (MiB, 2 * MiB, 0):
            dmloop.reload("rl", table(img, dev_size, offset))
            assert is_pinned(img)
            dmloop.resume("rl")
            assert dmloop.table("rl") == table(img, dev_size, offset)
            assert debugfs_info("rl")["mode"] == "block"
            assert is_pinned(img)
            assert module_figures()["block_devices"] == blocks_before + 1
            assert dmloop.read_bytes(dev, dev_size, direct=True) == \
                data[offset:offset + dev_size]
    finally:
        dmloop.remove("rl")
    assert not is_pinned(img)


def test_reload_block_to_file_mode_refused(ext4_fs):
    """A reload that would put a block-mode device's file into file mode is
    refused with EBUSY (the new table's writes would meet the live table's
    pin until the resume); the live table keeps working and the file stays
    pinned until the device is removed."""
    img, size = ext4_fs / "img-reload-b2f", 2 * MiB
    write_file(img, size, seed=63)
    tbl = table(img, size)
    dev = dmloop.create("sw", tbl)
    try:
        assert status_fields("sw")["mode"] == "block"
        kmsg = dmloop.Kmsg()
        kmsg.mark()
        p = dmloop.dmsetup("reload", "sw", check=False,
                           input=table(img, size, opts=("force_file",)) + "\n")
        lines = kmsg.new_lines()
        kmsg.close()
        assert p.returncode != 0 and "Device or resource busy" in p.stderr, p.stderr
        want = table_error_re("File is mapped by a block-mode dm-loop device", "EBUSY")
        assert any(want.search(l) for l in lines), lines
        assert "INACTIVE" not in dmloop.info("sw")
        dmloop.resume("sw")
        assert dmloop.table("sw") == tbl and status_fields("sw")["mode"] == "block"
        assert is_pinned(img)
        dmloop.write_random(dev, size, seed=64, direct=True)
        dmloop.verify_random(dev, size, seed=64, direct=True)
    finally:
        dmloop.remove("sw")
    assert not is_pinned(img)
    dmloop.verify_random(img, size, seed=64)


def test_reload_of_file_mode_device_stays_file_mode(ext4_fs):
    """Reloading a file-mode device with a table that could have block
    mode keeps file mode, reason `in_use` (pinning would fail the live
    table's writes until the resume), never pins the file and loses no
    data; with `require_block` that reload is refused, and the live
    table is untouched."""
    img, size = ext4_fs / "img-reload-f2b", 2 * MiB
    write_file(img, size, seed=65)
    dev = dmloop.create("sw", table(img, size, opts=("force_file",)))
    try:
        dmloop.write_random(dev, size, seed=66, direct=True)
        lines = assert_refused_reload("sw", table(img, size, opts=("require_block",)),
                                      "Block mode not possible: file used by a file-mode table",
                                      "EINVAL")
        assert any("%s: block mode required, not possible: in_use" % img in l
                   for l in lines), lines
        assert status_fields("sw")["reason"] == "forced"
        dmloop.reload("sw", table(img, size))
        assert not is_pinned(img)
        dmloop.resume("sw")
        st = status_fields("sw")
        assert (st["mode"], st["reason"]) == ("file", "in_use"), st
        assert not is_pinned(img)
        dmloop.verify_random(dev, size, seed=66, direct=True)
        dmloop.write_random(dev, size, seed=67, direct=True, fsync=True)
    finally:
        dmloop.remove("sw")
    assert not is_pinned(img)
    dmloop.verify_random(img, size, seed=67)


def assert_refused_reload(name, tbl, message, err):
    """dmsetup reload that must fail with `message`, leaving no inactive table."""
    kmsg = dmloop.Kmsg()
    try:
        kmsg.mark()
        p = dmloop.dmsetup("reload", name, check=False, input=tbl + "\n")
        lines = kmsg.new_lines()
    finally:
        kmsg.close()
    assert p.returncode != 0, "reload with %r was accepted" % tbl
    want = table_error_re(message, err)
    assert any(want.search(l) for l in lines), "no %r in:\n%s" % (want.pattern, "\n".join(lines))
    assert "INACTIVE" not in dmloop.info(name)
    return lines


# ------------------------------------------------------------ other owners

@pytest.mark.parametrize("opts", [(), ("force_file",)], ids=["auto", "force_file"])
def test_active_swapfile_refused(ext4_fs, opts):
    """A file in use as swap cannot back a device in any mode: EBUSY with its
    own kernel log line; after swapoff the same table works, and the other
    way round swapon refuses a file a block-mode device maps."""
    swap, size = ext4_fs / ("swap-" + (opts[0] if opts else "auto")), 4 * MiB
    write_file(swap, size, seed=71)
    os.chmod(swap, 0o600)
    dmloop.run(["mkswap", str(swap)])
    dmloop.run(["swapon", str(swap)])
    try:
        assert_refused("sw", table(swap, size, opts=opts),
                       "File is in use as a swapfile", "EBUSY")
    finally:
        dmloop.run(["swapoff", str(swap)])
    dmloop.create("sw", table(swap, size, opts=opts))
    try:
        if not opts:
            assert status_fields("sw")["mode"] == "block"
            p = dmloop.run(["swapon", str(swap)], check=False)
            if p.returncode == 0:
                dmloop.run(["swapoff", str(swap)])
            assert p.returncode != 0 and "Device or resource busy" in p.stderr, p.stderr
    finally:
        dmloop.remove("sw")


def test_same_file_twice_refused(ext4_fs):
    """A file a block-mode device maps cannot back a second device (block or
    file mode): EBUSY, each with its message; the first keeps working, and
    once it is gone the second can be created."""
    img, size = ext4_fs / "img-twice", 2 * MiB
    write_file(img, size, seed=81)
    first = dmloop.create("first", table(img, size))
    try:
        assert status_fields("first")["mode"] == "block"
        assert_refused("second", table(img, size),
                       "File is already mapped by another dm-loop device", "EBUSY")
        assert_refused("second", table(img, size, opts=("force_file",)),
                       "File is mapped by a block-mode dm-loop device", "EBUSY")
        dmloop.write_random(first, size, seed=82, direct=True)
        dmloop.verify_random(first, size, seed=82, direct=True)
        assert is_pinned(img)
    finally:
        dmloop.remove("first")
    dmloop.verify_random(img, size, seed=82)
    dmloop.create("second", table(img, size))
    try:
        assert status_fields("second")["mode"] == "block"
    finally:
        dmloop.remove("second")


def test_file_mode_device_keeps_block_mode_off_the_file(ext4_fs):
    """A second device cannot pin a file a file-mode device writes through
    the VFS (its writes would start failing with ETXTBSY): a plain table
    gets file mode, reason in_use, as force_file does (it used to fail
    with EBUSY); two file-mode devices share the file like two loop
    devices."""
    img, size = ext4_fs / "img-filemode", 2 * MiB
    write_file(img, size, seed=83)
    first = dmloop.create("first", table(img, size, opts=("force_file",)))
    try:
        dmloop.create("second", table(img, size))
        st = status_fields("second")
        assert (st["mode"], st["reason"]) == ("file", "in_use"), st
        assert not is_pinned(img)
        dmloop.remove("second")
        dmloop.create("second", table(img, size, opts=("force_file",)))
        dmloop.remove("second")
        dmloop.write_random(first, size, seed=84, direct=True, fsync=True)
        dmloop.verify_random(first, size, seed=84, direct=True)
    finally:
        dmloop.remove("first")
    dmloop.verify_random(img, size, seed=84)
