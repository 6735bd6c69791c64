"""Helpers for the block-mode safety and table tests (test_block_safety.py,
test_tables.py): the syscalls Python does not wrap (fallocate modes, FIEMAP,
FICLONE, FICLONERANGE, FIDEDUPERANGE, umount2), the kernel log lines a
refused table leaves, and the checks that a refused or removed device left
nothing behind.  Stdlib only.
"""

import collections
import ctypes
import errno
import fcntl
import os
import re
import struct
from pathlib import Path

import dmloop
from dmloop import target_info, write_probe  # noqa: F401  (shared; the tests import it from here)

KiB = 1 << 10
MiB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret):
    if ret:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# ------------------------------------------------------------ syscalls

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def fallocate(fd, mode, offset, length):
    _check(_libc.fallocate(fd, mode, offset, length))


def umount2(mountpoint, flags=0):
    _check(_libc.umount2(os.fsencode(str(mountpoint)), flags))


FICLONE = 0x40049409            # _IOW(0x94, 9, int)
FICLONERANGE = 0x4020940d       # _IOW(0x94, 13, struct file_clone_range)
FIDEDUPERANGE = 0xc0189436      # _IOWR(0x94, 54, struct file_dedupe_range)
FILE_DEDUPE_RANGE_DIFFERS = 1


def ficlone(dst_fd, src_fd):
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def ficlonerange(dst_fd, src_fd, src_offset, length, dst_offset):
    fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_offset, length, dst_offset))


def dedupe(src_fd, src_offset, length, dst_fd, dst_offset):
    """FIDEDUPERANGE with one destination; returns the bytes deduplicated.
    The ioctl reports a per-destination status: a negative one is raised as
    OSError, "contents differ" as ValueError."""
    buf = bytearray(struct.pack("QQHHI", src_offset, length, 1, 0, 0)
                    + struct.pack("qQQiI", dst_fd, dst_offset, 0, 0, 0))
    fcntl.ioctl(src_fd, FIDEDUPERANGE, buf)
    deduped, status = struct.unpack_from("Qi", buf, 24 + 16)
    if status < 0:
        raise OSError(-status, os.strerror(-status))
    if status == FILE_DEDUPE_RANGE_DIFFERS:
        raise ValueError("FIDEDUPERANGE: contents differ")
    return deduped


FS_IOC_FIEMAP = 0xc020660b
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000
Extent = collections.namedtuple("Extent", "logical physical length flags")


def fiemap(path, batch=256):
    """The file's extents (bytes), as FIEMAP reports them after a sync."""
    fd = os.open(str(path), os.O_RDONLY)
    out = []
    start = 0
    try:
        while True:
            buf = bytearray(32 + 56 * batch)
            struct.pack_into("QQIIII", buf, 0, start, (1 << 64) - 1 - start,
                             FIEMAP_FLAG_SYNC, 0, batch, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("I", buf, 20)[0]
            for i in range(mapped):
                lo, ph, ln, _, _, fl = struct.unpack_from("QQQQQI", buf, 32 + 56 * i)
                out.append(Extent(lo, ph, ln, fl))
            if not mapped or out[-1].flags & FIEMAP_EXTENT_LAST:
                return out
            start = out[-1].logical + out[-1].length
    finally:
        os.close(fd)


def read_host_blocks(disk, extents):
    """The bytes on `disk` under `extents` (O_DIRECT, past any page cache)."""
    out = bytearray()
    for e in extents:
        out += dmloop.read_bytes(disk, e.length, offset=e.physical, direct=True)
    return bytes(out)


# ------------------------------------------------------------ files and mounts

def mount_source(mountpoint):
    mp = os.path.realpath(str(mountpoint))
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[1] == mp:
            return f[0]
    raise LookupError("%s is not a mount point" % mp)


def block_size(path):
    return os.statvfs(str(path)).f_bsize


def write_file(path, size, seed):
    """A fully written, synced file of random_bytes(size, seed)."""
    dmloop.write_random(path, size, seed=seed, fsync=True)


def is_pinned(path):
    """True when writes to the file are refused as to an active swapfile."""
    e = write_probe(path)
    if e not in (None, errno.ETXTBSY):
        raise OSError(e, "write probe of %s: %s" % (path, os.strerror(e)))
    return e == errno.ETXTBSY


def table(path, size, offset=0, opts=()):
    t = "0 %d loop %s %d" % (size // 512, path, offset)
    if opts:
        t += " %d %s" % (len(opts), " ".join(opts))
    return t


def _status_dict(f):
    assert f[2] == "loop" and len(f) == 10, f
    return {"mode": f[3], "extents": int(f[4]), "reads": int(f[5]), "writes": int(f[6]),
            "flushes": int(f[7]), "splits": int(f[8]), "reason": f[9]}


def status_fields(name):
    """dmsetup status as a dict: mode, extents, reads, writes, flushes, splits, reason."""
    return _status_dict(dmloop.status(name).split())


def status_lines(name):
    """dmsetup status of a table of several loop targets: one dict per line,
    with the target's start sector as "start"."""
    out = []
    for line in dmloop.status(name).splitlines():
        d = _status_dict(line.split())
        d["start"] = int(line.split()[0])
        out.append(d)
    return out


def dm_names():
    """Names of all device-mapper devices, from sysfs (no dmsetup process)."""
    return sorted(p.read_text().strip() for p in Path("/sys/block").glob("dm-*/dm/name"))


def debugfs_info(name):
    """The debugfs `info` figures (numbers as int) of the live loop target of
    device `name` (a single-target table)."""
    minor = os.minor(os.stat("/dev/mapper/" + name).st_rdev)
    insts = sorted(DEBUGFS.glob("dm-%d-*" % minor), key=lambda p: int(p.name.split("-")[-1]))
    assert insts, "no debugfs instance of %s (dm-%d)" % (name, minor)
    return dmloop.info_dict((insts[0] / "info").read_text())


# ------------------------------------------------------------ refused tables

# ti->error of a require_block table that bmap refused (hole, unwritten, shared).
UNMAPPED_MSG = "Block mode not possible: hole, unwritten or shared"


def try_create(name, tbl, readonly=False):
    """dmsetup create that may fail: (CompletedProcess, kernel log lines it caused)."""
    kmsg = dmloop.Kmsg()
    try:
        kmsg.mark()
        args = ["create", name] + (["--readonly"] if readonly else [])
        p = dmloop.dmsetup(*args, check=False, input=tbl + "\n")
        if p.returncode == 0:
            dmloop.created_devices.append(name)
        return p, kmsg.new_lines()
    finally:
        kmsg.close()


def table_error_re(message, err=None, who="loop"):
    """The line dm-table logs when a constructor fails:
    `device-mapper: table: <maj>:<min>: loop: <ti->error> (-E...)`."""
    tail = r" \(-%s\)" % err if err else ""
    return re.compile(r"device-mapper: table: \d+:\d+: %s%s%s$"
                      % (who + ": " if who else "", re.escape(message), tail))


def assert_refused(name, tbl, message, err, readonly=False, who="loop"):
    """Create `name` with `tbl`: it must fail, log exactly `message` for the
    target (with errno name `err`), and leave no device.  Returns the kernel log."""
    p, lines = try_create(name, tbl, readonly)
    if p.returncode == 0:
        dmloop.remove(name)
        raise AssertionError("table %r was accepted: %s" % (tbl, lines))
    want = table_error_re(message, err, who)
    assert any(want.search(l) for l in lines), (
        "no kernel log line matching %r for table %r; got:\n%s\ndmsetup: %s"
        % (want.pattern, tbl, "\n".join(lines), p.stderr.strip()))
    assert name not in dm_names(), "a refused table left device %s behind" % name
    return lines


PARAMS = Path("/sys/module/dm_loop/parameters")
DEBUGFS = Path("/sys/kernel/debug/dm-loop")


def module_figures():
    """The module-wide figures under /sys/module/dm_loop/parameters/."""
    # The read-only ones: the writable ones are settings (bmap_walk, debug knobs).
    return {p.name: int(p.read_text()) for p in sorted(PARAMS.iterdir())
            if not p.stat().st_mode & 0o222}


def debugfs_instances():
    return sorted(p.name for p in DEBUGFS.iterdir()) if DEBUGFS.is_dir() else []


def assert_nothing_left(path=None):
    """No dm device, every module figure back to 0, no debugfs instance, and
    the backing file (if given) takes writes again."""
    assert dm_names() == [], dm_names()
    figures = module_figures()
    assert all(v == 0 for v in figures.values()), figures
    assert debugfs_instances() == [], debugfs_instances()
    if path is not None:
        assert write_probe(path) is None, "%s still refuses writes" % path


def sparse_block_mode(fstype):
    """True where a sparse or preallocated file gets block mode: XFS with
    the pNFS block export operations (CONFIG_EXPORTFS_BLOCK_OPS; Debian's
    6.1 and our 7.2 have them, our 6.12 and debug kernels do not)."""
    if fstype != "xfs":
        return False
    if not dmloop.filesystem_available("xfs"):
        dmloop.modprobe("xfs")
    with open("/proc/kallsyms") as f:
        return any(line.split()[2:3] == ["xfs_fs_map_blocks"] for line in f)
