"""Helpers for the reliability tests (test_faults.py, test_lifecycle.py,
test_hostile_tables.py): device-mapper ioctls issued directly on
/dev/mapper/control (hundreds of tables a second, where dmsetup costs a
process each), the module's figures, slab and kmemleak snapshots, FIEMAP,
I/O with a time limit, and the fixture that checks every test module leaves
the module's figures at zero.  Stdlib only.
"""

import ctypes
import errno
import fcntl
import mmap
import os
import re
import struct
import threading
import time
from pathlib import Path

import pytest

from dmloop import write_probe  # noqa: F401  (shared; the tests import it from here)

KiB = 1 << 10
MiB = 1 << 20
SECTOR = 512

PARAMS = Path("/sys/module/dm_loop/parameters")
DEBUGFS = Path("/sys/kernel/debug/dm-loop")
KMEMLEAK = Path("/sys/kernel/debug/kmemleak")

# The long variants: marked `stress` (make stress selects them with -m
# stress) and skipped unless DMLOOP_STRESS=1, so a make check that lists a
# whole file still leaves them out.
STRESS = os.environ.get("DMLOOP_STRESS") == "1"
stress = [pytest.mark.stress,
          pytest.mark.skipif(not STRESS, reason="long test: make stress runs it (DMLOOP_STRESS=1)")]


def stressed(fn):
    """Decorator form of `stress`."""
    for mark in reversed(stress):
        fn = mark(fn)
    return fn


# ------------------------------------------------------------ dm ioctls

# struct dm_ioctl (linux/dm-ioctl.h): version[3], data_size, data_start,
# target_count, open_count, flags, event_nr, padding, dev, name[128],
# uuid[129], data[7]: 312 bytes.
_DM_IOCTL = struct.Struct("=3I I I I i I I I Q 128s 129s 7s")
# struct dm_target_spec: sector_start, length, status, next, target_type[16].
_DM_SPEC = struct.Struct("=Q Q i I 16s")
assert _DM_IOCTL.size == 312 and _DM_SPEC.size == 40

DM_VERSION_CMD, DM_DEV_CREATE_CMD, DM_DEV_REMOVE_CMD = 0, 3, 4
DM_DEV_SUSPEND_CMD, DM_DEV_STATUS_CMD = 6, 7
DM_TABLE_LOAD_CMD, DM_TABLE_CLEAR_CMD, DM_TABLE_STATUS_CMD = 9, 10, 12
DM_TARGET_MSG_CMD = 14

DM_READONLY_FLAG = 1 << 0
DM_SUSPEND_FLAG = 1 << 1
DM_STATUS_TABLE_FLAG = 1 << 4
DM_ACTIVE_PRESENT_FLAG = 1 << 5
DM_INACTIVE_PRESENT_FLAG = 1 << 6
DM_BUFFER_FULL_FLAG = 1 << 8
DM_SKIP_LOCKFS_FLAG = 1 << 10
DM_NOFLUSH_FLAG = 1 << 11
DM_QUERY_INACTIVE_TABLE_FLAG = 1 << 12


def _iowr(nr, size=_DM_IOCTL.size):
    return (3 << 30) | (size << 16) | (0xfd << 8) | nr


class DmInfo:
    """What a dm ioctl says about a device."""

    def __init__(self, fields):
        (_v0, _v1, _v2, self.data_size, self.data_start, self.target_count,
         self.open_count, self.flags, self.event_nr, _pad, dev, name, _uuid, _d) = fields
        self.devno = os.makedev((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00))
        self.name = name.rstrip(b"\0").decode()

    @property
    def minor(self):
        return os.minor(self.devno)

    @property
    def node(self):
        """The devtmpfs node, present without udev or dmsetup."""
        return "/dev/dm-%d" % self.minor

    @property
    def active(self):
        return bool(self.flags & DM_ACTIVE_PRESENT_FLAG)

    @property
    def inactive(self):
        return bool(self.flags & DM_INACTIVE_PRESENT_FLAG)

    @property
    def suspended(self):
        return bool(self.flags & DM_SUSPEND_FLAG)


class DmControl:
    """Device-mapper ioctls on /dev/mapper/control (struct dm_ioctl), one
    system call each: what libdevmapper does, without a process per table.
    Errors raise OSError with the kernel's errno."""

    def __init__(self):
        self.fd = os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ioctl(self, cmd, name="", flags=0, payload=b"", target_count=0, bufsize=16 * KiB):
        size = max(bufsize, _DM_IOCTL.size + len(payload))
        nm = name.encode() if isinstance(name, str) else name
        buf = bytearray(size)
        _DM_IOCTL.pack_into(buf, 0, 4, 0, 0, size, _DM_IOCTL.size, target_count, 0,
                            flags, 0, 0, 0, nm, b"", b"")
        buf[_DM_IOCTL.size:_DM_IOCTL.size + len(payload)] = payload
        fcntl.ioctl(self.fd, _iowr(cmd), buf, True)
        info = DmInfo(_DM_IOCTL.unpack_from(buf, 0))
        return info, buf

    def version(self):
        info, buf = self._ioctl(DM_VERSION_CMD)
        return struct.unpack_from("=3I", buf, 0)

    def create(self, name, readonly=False):
        """DM_DEV_CREATE: a device with no table; returns its DmInfo."""
        return self._ioctl(DM_DEV_CREATE_CMD, name, DM_READONLY_FLAG if readonly else 0)[0]

    def remove(self, name):
        return self._ioctl(DM_DEV_REMOVE_CMD, name)[0]

    def load(self, name, targets, readonly=False):
        """DM_TABLE_LOAD of [(start, length, target type, params)], params str
        or bytes (NUL-free): runs the constructors, leaves an inactive table."""
        payload = bytearray()
        for i, (start, length, ttype, params) in enumerate(targets):
            p = params.encode() if isinstance(params, str) else bytes(params)
            p += b"\0"
            p += b"\0" * (-(len(p)) % 8)
            nxt = _DM_SPEC.size + len(p) if i + 1 < len(targets) else 0
            payload += _DM_SPEC.pack(start, length, 0, nxt, ttype.encode())
            payload += p
        return self._ioctl(DM_TABLE_LOAD_CMD, name, DM_READONLY_FLAG if readonly else 0,
                           bytes(payload), len(targets))[0]

    def load_line(self, name, line, readonly=False):
        """load() of one dmsetup-style line `<start> <length> <type> <params>`."""
        start, length, ttype, params = (line.split(None, 3) + [""])[:4]
        return self.load(name, [(int(start), int(length), ttype, params)], readonly)

    def clear(self, name):
        """DM_TABLE_CLEAR: drop the inactive table (runs its destructors)."""
        return self._ioctl(DM_TABLE_CLEAR_CMD, name)[0]

    def resume(self, name, skip_lockfs=False):
        """Make a loaded table live (suspending the old one first)."""
        return self._ioctl(DM_DEV_SUSPEND_CMD, name,
                           DM_SKIP_LOCKFS_FLAG if skip_lockfs else 0)[0]

    def suspend(self, name, skip_lockfs=False, noflush=False):
        flags = DM_SUSPEND_FLAG
        flags |= DM_SKIP_LOCKFS_FLAG if skip_lockfs else 0
        flags |= DM_NOFLUSH_FLAG if noflush else 0
        return self._ioctl(DM_DEV_SUSPEND_CMD, name, flags)[0]

    def info(self, name):
        return self._ioctl(DM_DEV_STATUS_CMD, name)[0]

    def exists(self, name):
        try:
            self.info(name)
            return True
        except OSError as e:
            if e.errno == errno.ENXIO:
                return False
            raise

    def _status(self, name, flags):
        bufsize = 16 * KiB
        while True:
            info, buf = self._ioctl(DM_TABLE_STATUS_CMD, name, flags, bufsize=bufsize)
            if not info.flags & DM_BUFFER_FULL_FLAG:
                break
            bufsize *= 4
        out, pos = [], info.data_start
        for _ in range(info.target_count):
            start, length, _st, nxt, ttype = _DM_SPEC.unpack_from(buf, pos)
            s = pos + _DM_SPEC.size
            text = bytes(buf[s:buf.index(b"\0", s)]).decode("utf-8", "replace")
            out.append((start, length, ttype.rstrip(b"\0").decode(), text))
            pos = info.data_start + nxt
        return out

    def status(self, name, inactive=False):
        """[(start, length, type, INFO status)]."""
        return self._status(name, DM_QUERY_INACTIVE_TABLE_FLAG if inactive else 0)

    def table(self, name, inactive=False):
        """[(start, length, type, TABLE status: the constructor's arguments)]."""
        return self._status(name, DM_STATUS_TABLE_FLAG |
                            (DM_QUERY_INACTIVE_TABLE_FLAG if inactive else 0))

    def message(self, name, sector, text):
        payload = struct.pack("=Q", sector) + text.encode() + b"\0"
        info, buf = self._ioctl(DM_TARGET_MSG_CMD, name, 0, payload)
        return bytes(buf[info.data_start:buf.index(b"\0", info.data_start)]).decode()

    def remove_retry(self, name, tries=50, delay=0.1):
        """Remove, retrying while busy (a closing opener may hold it a moment)."""
        for i in range(tries):
            try:
                return self.remove(name)
            except OSError as e:
                if e.errno != errno.EBUSY or i == tries - 1:
                    raise
                time.sleep(delay)


def dm_names(prefix=""):
    """dm devices whose name starts with `prefix` (from sysfs: no ioctl needed)."""
    out = []
    for d in Path("/sys/block").glob("dm-*"):
        try:
            name = (d / "dm" / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith(prefix):
            out.append(name)
    return sorted(out)


def remove_all(prefix):
    """Remove every dm device named prefix*; returns the names removed."""
    names = dm_names(prefix)
    with DmControl() as dm:
        for n in names:
            dm.remove_retry(n)
    return names


# ------------------------------------------------------------ leaks

def module_figures():
    """/sys/module/dm_loop/parameters/* as {name: int}."""
    # The read-only ones: the writable ones are settings (bmap_walk, debug knobs).
    return {p.name: int(p.read_text()) for p in sorted(PARAMS.iterdir())
            if not p.stat().st_mode & 0o222}


def debugfs_instances():
    return sorted(p.name for p in DEBUGFS.iterdir()) if DEBUGFS.is_dir() else []


def assert_module_idle():
    """No loop target anywhere: every module figure 0, no debugfs instance."""
    figures = module_figures()
    assert all(v == 0 for v in figures.values()), "module figures not back to 0: %s" % figures
    assert debugfs_instances() == [], "debugfs instances left: %s" % debugfs_instances()


def loop_devices():
    """Names of dm devices with a loop target in their live table."""
    out = []
    with DmControl() as dm:
        for n in dm_names():
            try:
                if any(t[2] == "loop" for t in dm.table(n)):
                    out.append(n)
            except OSError:
                pass
    return out


@pytest.fixture(scope="module", autouse=True)
def module_figures_back_to_zero():
    """After the test module: every module figure is back to 0 and no debugfs
    instance is left (import this fixture into a test file to use it)."""
    yield
    if not PARAMS.is_dir():
        return
    left = loop_devices()
    assert not left, "loop devices left after the module: %s" % left
    assert_module_idle()


def slab_active():
    """{cache: active objects} for the kmalloc caches in /proc/slabinfo."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            fields = line.split()
            if fields and re.match(r"kmalloc-(rcl-|cg-)?\d+k?$", fields[0]):
                out[fields[0]] = int(fields[1])
    return out


def _shrink_order(path):
    """Sort key: object size, and the plain kmalloc-N after kmalloc-{cg,rcl}-N."""
    m = re.search(r"(\d+)(k?)$", path.name)
    size = int(m.group(1)) << (10 if m.group(2) else 0) if m else 0
    return size, not re.fullmatch(r"kmalloc-\d+k?", path.name)


def settle_slabs():
    """Free what RCU and the page allocator hold back, so slab counts settle.

    SLUB counts every object of a CPU's active slab as in use: shrinking a
    cache hands that slab back, and the next allocation from the cache takes
    a whole slab again (kmalloc-8: 512 objects).  Each write to a shrink file
    allocates a small buffer (kernfs copies the "1" into kmalloc-8), so the
    caches are shrunk largest first and kmalloc-8 last: no write follows it."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")
    time.sleep(0.2)
    caches = sorted(Path("/sys/kernel/slab").glob("kmalloc-*"), key=_shrink_order,
                    reverse=True)
    for cache in caches:
        try:
            (cache / "shrink").write_text("1")
        except OSError:
            pass


def slab_growth(before, after):
    return {k: after.get(k, 0) - v for k, v in before.items() if after.get(k, 0) - v > 0}


def kmemleak_available():
    return KMEMLEAK.exists()


def kmemleak_scan(min_age=6):
    """Scan now and return the report text.  kmemleak leaves objects younger
    than 5 s alone and reports one only after it stayed unreferenced through
    a scan: wait `min_age` seconds, then scan twice."""
    time.sleep(min_age)
    for _ in range(2):
        KMEMLEAK.write_text("scan")
    return KMEMLEAK.read_text()


def kmemleak_clear():
    KMEMLEAK.write_text("clear")


def kmemleak_blocks(report, pattern=r"\[dm_loop\]|dm[-_]loop"):
    """The report's entries (one per unreferenced object) matching `pattern`."""
    blocks = re.split(r"(?=^unreferenced object)", report, flags=re.M)
    return [b for b in blocks if b.strip() and re.search(pattern, b)]


# ------------------------------------------------------------ files

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2

FS_IOC_FIEMAP = 0xc020660b
_FIEMAP = struct.Struct("=QQIIII")                 # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")       # logical, physical, length, 2 reserved, flags, 3 reserved
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_LAST = 1


def fiemap(path, batch=256):
    """[(logical, physical, length)] in bytes, after syncing the file."""
    out, start = [], 0
    fd = os.open(str(path), os.O_RDONLY)
    try:
        while True:
            buf = bytearray(_FIEMAP.size + batch * _FIEMAP_EXTENT.size)
            _FIEMAP.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, batch, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
            n = _FIEMAP.unpack_from(buf, 0)[3]
            last = False
            for i in range(n):
                e = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP.size + i * _FIEMAP_EXTENT.size)
                out.append((e[0], e[1], e[2]))
                last = bool(e[5] & FIEMAP_EXTENT_LAST)
            if n == 0 or last:
                return out
            start = out[-1][0] + out[-1][2]
    finally:
        os.close(fd)


def umount2(mountpoint, flags=0):
    if _libc.umount2(os.fsencode(str(mountpoint)), flags):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(mountpoint))


def fadvise_dontneed(path):
    """Drop the page cache of one file (after writing back what is dirty)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ------------------------------------------------------------ I/O with a deadline

class Hung(AssertionError):
    pass


def with_deadline(fn, timeout=60, what="I/O"):
    """Run fn() in a thread; its result, or re-raise its exception; Hung when
    it has not returned after `timeout` seconds (the thread is left behind:
    the hung-task detector and the VM timeout take it from there)."""
    box = {}

    def body():
        try:
            box["result"] = fn()
        except BaseException as e:      # noqa: B902 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise Hung("%s did not complete within %d s" % (what, timeout))
    if "error" in box:
        raise box["error"]
    return box.get("result")


def direct_io(dev, op, offset, size, data=None, timeout=60):
    """One O_DIRECT pread/pwrite/fsync on `dev` in a thread with a deadline.
    Returns 0 on success or the errno of the failure (never hangs silently)."""
    def body():
        flags = os.O_RDONLY if op == "read" else os.O_WRONLY
        fd = os.open(str(dev), flags | os.O_DIRECT | os.O_CLOEXEC)
        buf = mmap.mmap(-1, max(size, 4096))
        try:
            if op == "read":
                n = os.preadv(fd, [memoryview(buf)[:size]], offset)
                if n != size:
                    return errno.EIO
            elif op == "write":
                buf[:size] = data
                n = os.pwritev(fd, [memoryview(buf)[:size]], offset)
                if n != size:
                    return errno.EIO
            elif op == "fsync":
                os.fsync(fd)
            else:
                raise ValueError(op)
            return 0
        except OSError as e:
            return e.errno
        finally:
            buf.close()
            os.close(fd)
    return with_deadline(body, timeout, "%s of %s at %d" % (op, dev, offset))


def read_direct(dev, offset, size):
    fd = os.open(str(dev), os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    buf = mmap.mmap(-1, size)
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        buf.close()
        os.close(fd)


# ------------------------------------------------------------ fio

def fio_available():
    return any(os.access(os.path.join(d, "fio"), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(":"))


def fio_cmd(jobs, *common):
    """fio command line: `jobs` is a list of (name, filename, [extra args])."""
    cmd = ["fio", "--output-format=normal"] + list(common)
    for name, filename, extra in jobs:
        cmd += ["--name=%s" % name, "--filename=%s" % filename] + list(extra)
    return cmd


def fio_err_total(output):
    """Sum of the err= figures of every job in fio's normal output."""
    errs = [int(m) for m in re.findall(r"\berr=\s*(\d+)", output)]
    if not errs:
        raise AssertionError("no err= line in fio output:\n%s" % output)
    return sum(errs)


# ------------------------------------------------------------ dm-log-writes

# The log's format: drivers/md/dm-log-writes.c and
# Documentation/admin-guide/device-mapper/log-writes.rst.  Block 0 holds the
# super; each entry is one block of header (a mark's name inline) followed
# by its data blocks; blocks are the data device's logical block size.
LOG_FLUSH, LOG_FUA, LOG_DISCARD, LOG_MARK, LOG_METADATA = 1, 2, 4, 8, 16
_LOG_SUPER = struct.Struct("<QQQI")        # magic, version, nr_entries, sectorsize
_LOG_ENTRY = struct.Struct("<QQQQ")        # sector, nr_sectors, flags, data_len
LOG_MAGIC = 0x6a736677736872


class LogEntry:
    def __init__(self, index, sector, nr_sectors, flags, data):
        self.index, self.sector, self.nr_sectors = index, sector, nr_sectors
        self.flags, self.data = flags, data

    @property
    def mark(self):
        return self.data.rstrip(b"\0").decode() if self.flags & LOG_MARK else None

    def __repr__(self):
        kinds = [n for f, n in ((LOG_FLUSH, "flush"), (LOG_FUA, "fua"), (LOG_DISCARD, "discard"),
                                (LOG_MARK, "mark"), (LOG_METADATA, "meta")) if self.flags & f]
        return "<%d %s %d+%d%s>" % (self.index, "|".join(kinds) or "write", self.sector,
                                    self.nr_sectors, " %r" % self.mark if self.mark else "")


def read_log_writes(logdev):
    """(sector size, [LogEntry]) from a dm-log-writes log device; `sector`
    and `nr_sectors` of an entry count blocks of that sector size."""
    with open(str(logdev), "rb", buffering=0) as f:
        magic, version, nr_entries, bsize = _LOG_SUPER.unpack(f.read(_LOG_SUPER.size))
        assert magic == LOG_MAGIC and version == 1, "not a dm-log-writes log: %x" % magic
        entries, pos = [], bsize
        for i in range(nr_entries):
            f.seek(pos)
            block = f.read(bsize)
            sector, nr, flags, data_len = _LOG_ENTRY.unpack_from(block)
            pos += bsize
            if flags & LOG_MARK:
                data = block[_LOG_ENTRY.size:_LOG_ENTRY.size + data_len]
            elif flags & LOG_DISCARD or not nr:
                data = b""
            else:
                data = f.read(nr * bsize)
                pos += nr * bsize
            entries.append(LogEntry(i, sector, nr, flags, data))
    return bsize, entries
