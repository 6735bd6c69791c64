"""Host-device faults: every error the host device returns reaches the
process doing I/O on the dm-loop device, nothing hangs, and once the fault
clears the device works again.

The stack: scratch disk -> dm device "rel-host" (linear, reloadable) ->
ext4 without a journal, errors=continue (a failed data write then cannot
abort a journal and turn the filesystem read-only) on its first 64 MiB ->
an 8 MiB file -> dm-loop in block mode, file mode with direct I/O and file
mode with buffered I/O.  A fault is a reload of rel-host, with its lockfs
skipped so nothing on the faulty device is frozen:

- error_target: dm-error over the file's blocks (reads and writes fail);
- write: dm-flakey error_writes over the file's blocks (writes and flushes
  fail, reads pass);
- flush: dm-flakey error_writes over the disk's unused tail only (only
  flushes fail: every target of a table gets a copy of a flush);
- window: dm-flakey failing all I/O over the whole disk.

The caller does O_DIRECT reads and writes on the dm-loop device and fsync.
Buffered file mode acknowledges a write into the page cache: its error must
come back at the next fsync.

Crash consistency: with rel-host switched to dm-log-writes (scratch disk 2
is the log), a write acknowledged through dm-loop and then flushed (fsync,
or an O_DSYNC write) is logged before the flush that made it durable.  On the debug kernel the same holds with
fail_make_request on the scratch disk, and failslab's fail-nth fails each
allocation of a table load in turn, through the constructor: refused
cleanly or loaded, never leaked (kmemleak scans after).
"""

import errno
import mmap
import os
from pathlib import Path

import pytest

import dmloop
from reliability_util import (  # noqa: F401 (module_figures_back_to_zero: autouse fixture)
    LOG_FLUSH, LOG_FUA, LOG_MARK, MiB, DmControl, assert_module_idle, direct_io,
    fadvise_dontneed, fiemap, kmemleak_available, kmemleak_blocks, kmemleak_scan,
    module_figures_back_to_zero, read_direct, read_log_writes, with_deadline, write_probe)

HOST = "rel-host"
LOOP = "rel-loop"
IMG_SIZE = 8 * MiB
FS_SIZE = 64 * MiB              # the rest of the disk is the unused tail
IO_OFF, IO_SIZE = 1 * MiB, 64 * 1024
EIO = errno.EIO

MODES = {
    "block": "",
    "file_direct": " 1 force_file",
    "file_buffered": " 2 force_file no_direct_io",
}

# (read, write, fsync) as the caller sees them: 0 or the errno.  Buffered
# file mode acknowledges writes from the page cache: their error comes at
# the fsync.  dm-error takes no flushes, so a flush passes it.
EXPECTED = {
    ("block", "error_target"): (EIO, EIO, 0),
    ("block", "write"): (0, EIO, EIO),
    ("block", "flush"): (0, 0, EIO),
    ("block", "window"): (EIO, EIO, EIO),
    ("file_direct", "error_target"): (EIO, EIO, 0),
    ("file_direct", "write"): (0, EIO, EIO),
    ("file_direct", "flush"): (0, 0, EIO),
    ("file_direct", "window"): (EIO, EIO, EIO),
    ("file_buffered", "error_target"): (EIO, 0, EIO),
    ("file_buffered", "write"): (0, 0, EIO),
    ("file_buffered", "flush"): (0, 0, EIO),
    ("file_buffered", "window"): (EIO, 0, EIO),
}


class Host:
    """rel-host over a scratch disk; its table swapped for faulty ones."""

    def __init__(self, dm, disk):
        self.dm, self.disk = dm, disk
        self.sectors = dmloop.device_size(disk) // 512
        self.node = dm.create(HOST).node
        self.heal()

    def _swap(self, targets):
        self.dm.load(HOST, targets)
        self.dm.resume(HOST, skip_lockfs=True)

    def heal(self):
        self._swap([(0, self.sectors, "linear", "%s 0" % self.disk)])

    def log_to(self, logdev):
        """Log every write from now on (dm-log-writes) to `logdev`."""
        self._swap([(0, self.sectors, "log-writes", "%s %s" % (self.disk, logdev))])

    def fail(self, kind, ranges):
        """Put the fault `kind` over the sector ranges [(start, length)]."""
        if kind == "window":
            self._swap([(0, self.sectors, "flakey", "%s 0 0 1" % self.disk)])
            return
        fault = {"error_target": lambda s: ("error", ""),
                 "write": lambda s: ("flakey", "%s %d 0 1 1 error_writes" % (self.disk, s)),
                 "flush": lambda s: ("flakey", "%s %d 0 1 1 error_writes" % (self.disk, s))}[kind]
        targets, pos = [], 0
        for start, length in sorted(ranges):
            if start > pos:
                targets.append((pos, start - pos, "linear", "%s %d" % (self.disk, pos)))
            ttype, params = fault(start)
            targets.append((start, length, ttype, params))
            pos = start + length
        if pos < self.sectors:
            targets.append((pos, self.sectors - pos, "linear", "%s %d" % (self.disk, pos)))
        self._swap(targets)


@pytest.fixture(scope="module")
def host_device():
    """rel-host over scratch disk 3, for the whole module."""
    dmloop.modprobe("dm-flakey")
    with DmControl() as dm:
        h = Host(dm, dmloop.scratch_disk(3))
        try:
            yield h
        finally:
            h.heal()
            dm.remove_retry(HOST)


@pytest.fixture
def host(host_device):
    """A fresh ext4 (no journal, errors=continue) on rel-host's first
    64 MiB, mounted, with an 8 MiB file on it: no test inherits the error
    state of the buffers another one failed."""
    h = host_device
    mp = Path("/tmp/dmloop-faults")
    mp.mkdir(exist_ok=True)
    dmloop.run(["mkfs.ext4", "-F", "-q", "-O", "^has_journal", "-b", "4096", "-N", "256",
                "-E", "nodiscard", h.node, str(FS_SIZE // 1024) + "k"])
    dmloop.run(["mount", "-t", "ext4", "-o", "errors=continue", h.node, str(mp)])
    try:
        h.mp, h.img = mp, mp / "img"
        dmloop.write_random(h.img, IMG_SIZE, seed=1, fsync=True)
        h.file_ranges = [(phys // 512, length // 512)
                         for _log, phys, length in fiemap(h.img)]
        h.tail = [(FS_SIZE // 512, h.sectors - FS_SIZE // 512)]
        yield h
    finally:
        h.heal()
        dmloop.umount(mp)


def _loop_device(dm, host, mode):
    node = dm.create(LOOP).node
    dm.load(LOOP, [(0, IMG_SIZE // 512, "loop", "%s 0%s" % (host.img, MODES[mode]))])
    dm.resume(LOOP)
    want = "block" if mode == "block" else "file"
    assert dm.status(LOOP)[0][3].split()[0] == want
    return node


def _info(dm):
    return dict(line.split(": ", 1) for line in dm.message(LOOP, 0, "info").splitlines())


def _works_again(dm, host, node, seed):
    """Write, fsync and read back through the device; the file holds the
    data afterwards (read through the filesystem, from the disk)."""
    data = dmloop.random_bytes(MiB, seed)
    assert direct_io(node, "write", 4 * MiB, MiB, data) == 0
    assert direct_io(node, "fsync", 0, 0) == 0
    assert read_direct(node, 4 * MiB, MiB) == data
    fadvise_dontneed(host.img)
    with open(host.img, "rb") as f:
        f.seek(4 * MiB)
        assert f.read(MiB) == data, "the file does not hold what the device wrote"


@pytest.mark.parametrize("fault", ["error_target", "write", "flush", "window"])
@pytest.mark.parametrize("mode", list(MODES))
def test_host_fault_reaches_caller(host, mode, fault):
    """With the host failing as `fault` says, the caller's read, write and
    fsync on the dm-loop device fail with EIO exactly where the host's
    error lies (buffered file mode: at the fsync), each within 60 s; after
    the fault clears, the device reads and writes correctly again."""
    with DmControl() as dm:
        node = _loop_device(dm, host, mode)
        try:
            data = dmloop.random_bytes(IO_SIZE, 2)
            if mode == "file_buffered":
                fadvise_dontneed(host.img)      # the read must reach the host
            host.fail(fault, host.tail if fault == "flush" else host.file_ranges)
            try:
                got = (direct_io(node, "read", IO_OFF, IO_SIZE),
                       direct_io(node, "write", IO_OFF, IO_SIZE, data),
                       direct_io(node, "fsync", 0, 0))
            finally:
                host.heal()
            assert got == EXPECTED[(mode, fault)], (
                "(read, write, fsync) errnos %s, expected %s" % (got, EXPECTED[(mode, fault)]))
            if mode != "block":
                assert int(_info(dm)["errors"]) > 0, "file mode did not count its errors"
            _works_again(dm, host, node, seed=3)
        finally:
            dm.remove_retry(LOOP)
    assert write_probe(host.img) is None
    assert_module_idle()


def _host_sector(path, offset):
    """The host sector holding byte `offset` of the file (FIEMAP)."""
    for logical, physical, length in fiemap(path):
        if logical <= offset < logical + length:
            return (physical + offset - logical) // 512
    raise AssertionError("offset %d of %s is not allocated" % (offset, path))


@pytest.mark.parametrize("mode", list(MODES))
def test_partly_failed_read_is_an_error(host, mode):
    """An 8 KiB read whose second 4 KiB block fails on the host (dm-error
    over that one block, page cache dropped) fails with EIO: buffered
    file mode used to take filemap_read()'s short count for the end of
    the file and return zeros in the failed half.  Once healed, the same
    read returns the file's data."""
    with DmControl() as dm:
        node = _loop_device(dm, host, mode)
        try:
            fadvise_dontneed(host.img)
            host.fail("error_target", [(_host_sector(host.img, IO_OFF + 4096), 8)])
            try:
                got = direct_io(node, "read", IO_OFF, 8192)
            finally:
                host.heal()
            assert got == EIO, "the read of a failing block returned %s, not EIO" % (
                "success" if got == 0 else errno.errorcode.get(got, got))
            fadvise_dontneed(host.img)
            want = dmloop.random_bytes(IMG_SIZE, 1)[IO_OFF:IO_OFF + 8192]
            assert read_direct(node, IO_OFF, 8192) == want
        finally:
            dm.remove_retry(LOOP)
    assert_module_idle()


@pytest.mark.parametrize("mode", list(MODES))
def test_remove_during_fault(host, mode):
    """A device whose host fails all I/O (with buffered writes still
    dirty in file mode) is removed without hanging; the file is not pinned
    afterwards, and a new device over it works once the host is back."""
    with DmControl() as dm:
        node = _loop_device(dm, host, mode)
        try:
            assert direct_io(node, "write", IO_OFF, IO_SIZE, dmloop.random_bytes(IO_SIZE, 4)) == 0
            host.fail("window", [])
            try:
                dm.remove_retry(LOOP)
            finally:
                host.heal()
        finally:
            if dm.exists(LOOP):
                dm.remove_retry(LOOP)
        assert_module_idle()
        assert write_probe(host.img) is None
        node = _loop_device(dm, host, mode)
        try:
            _works_again(dm, host, node, seed=5)
        finally:
            dm.remove_retry(LOOP)


# ------------------------------------------------------------ flush ordering

def _dsync_write(node, offset, data):
    """One O_DIRECT|O_DSYNC write (a FUA write, or a write and a flush)."""
    def body():
        fd = os.open(node, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC | os.O_CLOEXEC)
        buf = mmap.mmap(-1, len(data))
        try:
            buf[:] = data
            return 0 if os.pwritev(fd, [buf], offset) == len(data) else errno.EIO
        except OSError as e:
            return e.errno
        finally:
            buf.close()
            os.close(fd)
    return with_deadline(body, 60, "O_DSYNC write of %s" % node)


def _host_blocks(path, offset, size, bsize):
    """{host block: offset in the range} for a file range (FIEMAP)."""
    out = {}
    for logical, physical, length in fiemap(path):
        for pos in range(max(offset, logical), min(offset + size, logical + length), bsize):
            out[(physical + pos - logical) // bsize] = pos - offset
    assert len(out) == size // bsize, "the range is not all allocated"
    return out


@pytest.mark.parametrize("how", ["fsync", "o_dsync"])
@pytest.mark.parametrize("mode", list(MODES))
def test_flush_orders_acknowledged_writes(host, mode, how):
    """dm-log-writes under the filesystem logs each write when a flush (or
    FUA) covers it.  A write acknowledged through dm-loop, then an fsync of
    the device (or one O_DSYNC write): between the marks set before and
    after, every block of that write holds its data in an entry logged
    before a flush entry (or in a FUA entry), so the flush that returned
    covered it.  A device that acknowledged the flush early (or never
    passed it down) leaves the data unlogged or logged after the mark."""
    dmloop.modprobe("dm-log-writes")
    logdev = dmloop.scratch_disk(2)
    data = dmloop.random_bytes(IO_SIZE, 9)
    with DmControl() as dm:
        node = _loop_device(dm, host, mode)
        try:
            host.log_to(logdev)
            try:
                dm.message(HOST, 0, "mark start")
                if how == "fsync":
                    assert direct_io(node, "write", IO_OFF, IO_SIZE, data) == 0
                    assert direct_io(node, "fsync", 0, 0) == 0
                else:
                    assert _dsync_write(node, IO_OFF, data) == 0
                dm.message(HOST, 0, "mark end")
            finally:
                host.heal()
        finally:
            dm.remove_retry(LOOP)
    bsize, entries = read_log_writes(logdev)
    marks = {e.mark: e.index for e in entries if e.flags & LOG_MARK}
    assert "start" in marks and "end" in marks, marks
    window = entries[marks["start"] + 1:marks["end"]]
    want = _host_blocks(host.img, IO_OFF, IO_SIZE, bsize)
    # The last data logged for each block of the write, and whether a flush
    # (or the entry's own FUA) followed it inside the window.
    last = {}
    for e in window:
        if e.flags & LOG_FLUSH:
            last = {b: (d, True) for b, (d, _durable) in last.items()}
        if e.data and not e.flags & LOG_MARK:
            for k in range(e.nr_sectors):
                if e.sector + k in want:
                    last[e.sector + k] = (e.data[k * bsize:(k + 1) * bsize],
                                          bool(e.flags & LOG_FUA))
    missing = [b for b, off in want.items()
               if b not in last or last[b][0] != data[off:off + bsize] or not last[b][1]]
    assert not missing, (
        "%d of %d blocks of the acknowledged write are not logged before a flush "
        "(entries between the marks: %s)" % (len(missing), len(want), window[:40]))


# ------------------------------------------------------------ debug kernel

DEBUGFS = Path("/sys/kernel/debug")
FAIL_MAKE_REQUEST = DEBUGFS / "fail_make_request"
FAILSLAB = DEBUGFS / "failslab"


def _set(directory, **values):
    old = {}
    for k, v in values.items():
        f = directory / k.replace("_", "-")
        old[k] = f.read_text().strip()
        f.write_text(str(v))
    return old


# Checked at collection (in the guest, debugfs mounted), so that a kernel
# without them skips before the host fixture makes a filesystem.
needs_fail_make_request = pytest.mark.skipif(
    not FAIL_MAKE_REQUEST.is_dir(),
    reason="kernel without CONFIG_FAIL_MAKE_REQUEST (the debug kernel has it)")
needs_failslab = pytest.mark.skipif(
    not FAILSLAB.is_dir() or not Path("/proc/thread-self/fail-nth").exists(),
    reason="kernel without CONFIG_FAILSLAB and fail-nth (the debug kernel has them)")


@needs_fail_make_request
@pytest.mark.parametrize("mode", list(MODES))
def test_fail_make_request_on_host_disk(host, mode):
    """fail_make_request on the scratch disk under rel-host (every bio to it
    fails): reads, writes and fsync on the dm-loop device fail with EIO as
    in a window fault, nothing hangs, and the device works again after."""
    disk = Path("/sys/block") / os.path.basename(host.disk)
    with DmControl() as dm:
        node = _loop_device(dm, host, mode)
        try:
            if mode == "file_buffered":
                fadvise_dontneed(host.img)
            old = _set(FAIL_MAKE_REQUEST, probability=100, interval=1, times=-1, verbose=0)
            (disk / "make-it-fail").write_text("1")
            try:
                got = (direct_io(node, "read", IO_OFF, IO_SIZE),
                       direct_io(node, "write", IO_OFF, IO_SIZE, dmloop.random_bytes(IO_SIZE, 6)),
                       direct_io(node, "fsync", 0, 0))
            finally:
                (disk / "make-it-fail").write_text("0")
                _set(FAIL_MAKE_REQUEST, **old)
            assert got == EXPECTED[(mode, "window")], got
            _works_again(dm, host, node, seed=7)
        finally:
            dm.remove_retry(LOOP)
    assert_module_idle()


def _fail_nth(n):
    Path("/proc/thread-self/fail-nth").write_text(str(n))


def _fail_nth_left():
    return int(Path("/proc/thread-self/fail-nth").read_text())


# Log lines dm core prints when an allocation past the targets' constructors
# fails (dm_table_complete(), the queue of a first table): from there on
# every allocation is dm core's.
DM_CORE_STAGE = ("unable to allocate mempools", "unable to set up device queue")


@needs_failslab
@pytest.mark.parametrize("mode", ["block", "file_direct"])
def test_failslab_during_table_load(host, mode):
    """The n-th slab allocation of a table load fails (fail-nth), for n = 1,
    2, ... through dm core's argument copies and the whole constructor,
    until the fault lands in dm core's work after it (its mempools) or a
    load goes through untouched.  The device already has a live table
    (dm-zero), so every load is the loop target's own first table over the
    file.  Each load is refused with ENOMEM (the constructor unwinding
    everything: module figures zero, no debugfs instance, no inactive
    table, the file not pinned) or loads a table that works.  Afterwards a
    load without faults works, and two kmemleak scans name nothing of
    dm-loop."""
    old = _set(FAILSLAB, ignore_gfp_wait="N", verbose=0, probability=0)
    tally = {"refused": 0, "loaded": 0}
    messages = set()
    params = "%s 0%s" % (host.img, MODES[mode])
    sectors = IMG_SIZE // 512
    want = dmloop.random_bytes(4096, 1)
    try:
        with DmControl() as dm:
            dm.create(LOOP)
            dm.load(LOOP, [(0, sectors, "zero", "")])
            dm.resume(LOOP)
            try:
                for n in range(1, 500):
                    pos = dmloop.kmsg_pos()
                    _fail_nth(n)
                    try:
                        dm.load(LOOP, [(0, sectors, "loop", params)])
                    except OSError as e:
                        _fail_nth(0)
                        log = [line for line in dmloop.kmsg_since(pos) if "device-mapper" in line]
                        assert e.errno == errno.ENOMEM, (e, log)
                        assert not dm.info(LOOP).inactive, "a refused load left a table"
                        assert_module_idle()
                        assert write_probe(host.img) is None, "a refused load left the file pinned"
                        tally["refused"] += 1
                        messages.update(line.split("loop: ", 1)[1] for line in log
                                        if "loop: " in line)
                        if any(m in line for line in log for m in DM_CORE_STAGE):
                            break       # past the constructor: dm core's allocations
                        continue
                    left = _fail_nth_left()
                    _fail_nth(0)
                    tally["loaded"] += 1
                    dm.resume(LOOP)
                    st = dm.status(LOOP)[0][3].split()
                    assert st[0] == ("block" if mode == "block" else "file"), st
                    assert read_direct(dm.info(LOOP).node, 0, 4096) == want
                    dm.load(LOOP, [(0, sectors, "zero", "")])
                    dm.resume(LOOP)
                    assert_module_idle()
                    if left:
                        break           # no fault was injected: every site was tried
                else:
                    raise AssertionError("a table load made over 500 allocations?")
                # Unfaulted, the same load works.
                dm.load(LOOP, [(0, sectors, "loop", params)])
                dm.resume(LOOP)
                assert read_direct(dm.info(LOOP).node, 0, 4096) == want
            finally:
                _fail_nth(0)
                if dm.exists(LOOP):
                    dm.remove_retry(LOOP)
    finally:
        _set(FAILSLAB, **old)
    print("\nfailslab %s: %s; the target said: %s" % (mode, tally, sorted(messages)))
    assert tally["refused"] >= 3 and messages, (tally, messages)
    assert write_probe(host.img) is None
    assert_module_idle()
    if kmemleak_available():
        leaks = kmemleak_blocks(kmemleak_scan())
        assert not leaks, "kmemleak:\n%s" % "\n".join(leaks)
