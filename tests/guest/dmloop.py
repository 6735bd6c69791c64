"""Helpers for the guest test suite (tests/guest), run inside debug/vm.

Import from a test file with `import dmloop` or `from dmloop import ...`
(pytest puts tests/guest on sys.path).  Stdlib only, so importing it on the
host (where the guest suite is skipped) is harmless.

Example:

    import dmloop

    def test_roundtrip(dmloop_module):
        with dmloop.mounted_fs("ext4") as mp:          # first scratch disk
            img = mp / "backing.img"
            dmloop.write_random(img, 8 << 20, seed=1)
            dev = dmloop.create("t0", "0 16384 loop %s" % img)
            try:
                dmloop.write_random(dev, 1 << 20, seed=2, direct=True)
                dmloop.verify_random(dev, 1 << 20, seed=2, direct=True)
            finally:
                dmloop.remove("t0")
"""

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "debug") not in sys.path:
    sys.path.insert(0, str(REPO / "debug"))
import faults  # noqa: E402  (debug/faults.py: the fault patterns shared with debug/vm)

CHUNK = 1 << 20
SECTOR = 512


# ------------------------------------------------------------ processes

def run(cmd, check=True, input=None, timeout=600, **kw):
    """Run `cmd` (list, or str for a shell command); CompletedProcess with text output.

    On failure (check=True) raises CalledProcessError whose message includes stderr.
    """
    shell = isinstance(cmd, str)
    p = subprocess.run(cmd, shell=shell, input=input, text=True, capture_output=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise CommandError(p)
    return p


class CommandError(subprocess.CalledProcessError):
    def __init__(self, p):
        super().__init__(p.returncode, p.args, p.stdout, p.stderr)

    def __str__(self):
        args = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        return "%s: exit %d\nstdout: %s\nstderr: %s" % (
            args, self.returncode, (self.stdout or "").strip(), (self.stderr or "").strip())


def modprobe(name, check=False):
    """modprobe a module; a failure is ignored unless check (it may be built in)."""
    return run(["modprobe", "-q", name], check=check)


def sync():
    os.sync()


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ------------------------------------------------------------ disks, filesystems

def scratch_disks():
    """The scratch block devices given with `debug/vm --disk`: ['/dev/vda', ...]."""
    names = [n for n in os.listdir("/sys/block") if re.fullmatch(r"vd[a-z]+", n)]
    names.sort(key=lambda n: (len(n), n))
    return ["/dev/" + n for n in names]


def scratch_disk(index=0):
    """One scratch disk; pytest.skip()s when the VM was started without it."""
    disks = scratch_disks()
    if len(disks) <= index:
        import pytest
        pytest.skip("needs at least %d scratch disk(s): debug/vm --disk SIZE ..." % (index + 1))
    return disks[index]


def device_size(dev):
    """Size in bytes of a block device (or a regular file)."""
    fd = os.open(str(dev), os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


MKFS = {
    "ext2": ["mkfs.ext2", "-F", "-q"],
    "ext3": ["mkfs.ext3", "-F", "-q"],
    "ext4": ["mkfs.ext4", "-F", "-q"],
    "xfs": ["mkfs.xfs", "-f", "-q"],
    "btrfs": ["mkfs.btrfs", "-f", "-q"],
}
FS_MODULE = {"ext2": "ext4", "ext3": "ext4", "ext4": "ext4", "xfs": "xfs", "btrfs": "btrfs"}


def filesystem_available(fstype):
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == fstype for line in f if line.strip())


def make_fs(dev, fstype, mountpoint, mkfs_args=(), mount_opts=None):
    """mkfs `dev` as `fstype` (quietly, forced) and mount it on `mountpoint` (created)."""
    if fstype not in MKFS:
        raise ValueError("make_fs: unsupported fstype %r (have %s)" % (fstype, ", ".join(MKFS)))
    if not filesystem_available(fstype):
        modprobe(FS_MODULE[fstype])
        if not filesystem_available(fstype):
            raise RuntimeError("filesystem %s is not available in this kernel" % fstype)
    run(MKFS[fstype] + list(mkfs_args) + [str(dev)])
    os.makedirs(str(mountpoint), exist_ok=True)
    cmd = ["mount", "-t", fstype]
    if mount_opts:
        cmd += ["-o", mount_opts]
    run(cmd + [str(dev), str(mountpoint)])
    return Path(mountpoint)


def is_mounted(mountpoint):
    mp = os.path.realpath(str(mountpoint))
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == mp for line in f)


def umount(mountpoint, retries=20, delay=0.25):
    """Unmount, retrying while busy; raises with the users of the mount if it stays busy."""
    last = None
    for _ in range(retries):
        p = run(["umount", str(mountpoint)], check=False)
        if p.returncode == 0 or not is_mounted(mountpoint):
            return
        last = p
        os.sync()
        time.sleep(delay)
    users = run(["fuser", "-vm", str(mountpoint)], check=False)
    raise RuntimeError("umount %s failed after %d tries: %s\nusers:\n%s%s" % (
        mountpoint, retries, last.stderr.strip(), users.stdout, users.stderr))


@contextlib.contextmanager
def mounted_fs(fstype, dev=None, mountpoint=None, mkfs_args=(), mount_opts=None):
    """Context manager: mkfs + mount a scratch disk (default: the first), yield the
    mount point as a Path, unmount at the end (also when the body failed)."""
    if dev is None:
        dev = scratch_disk(0)
    made_dir = mountpoint is None
    if made_dir:
        mountpoint = tempfile.mkdtemp(prefix="dmloop-%s-" % fstype, dir="/tmp")
    make_fs(dev, fstype, mountpoint, mkfs_args, mount_opts)
    try:
        yield Path(mountpoint)
    finally:
        umount(mountpoint)
        if made_dir:
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)


# ------------------------------------------------------------ device-mapper

# Devices created through create() and not yet removed; conftest removes
# leftovers after each test so one failing test does not break the next.
created_devices = []


def dmsetup(*args, check=True, input=None):
    """Run dmsetup with `args`; CompletedProcess (text).  Raises CommandError on failure
    when check (the message has dmsetup's stderr)."""
    return run(["dmsetup"] + [str(a) for a in args], check=check, input=input)


def create(name, table, readonly=False):
    """dmsetup create `name` with `table` (str, one or more lines); returns /dev/mapper/<name>."""
    args = ["create", name]
    if readonly:
        args.append("--readonly")
    if not table.endswith("\n"):
        table += "\n"
    dmsetup(*args, input=table)
    created_devices.append(name)
    return Path("/dev/mapper") / name


def exists(name):
    return dmsetup("info", name, check=False).returncode == 0


def remove(name, retries=10, delay=0.3, force=False):
    """dmsetup remove, retrying a few times while the device is busy (EBUSY)."""
    args = ["remove"] + (["--force"] if force else []) + [name]
    for i in range(retries):
        p = dmsetup(*args, check=False)
        if p.returncode == 0:
            break
        busy = "busy" in p.stderr.lower()
        if not busy or i == retries - 1:
            raise CommandError(p)
        os.sync()
        time.sleep(delay)
    if name in created_devices:
        created_devices.remove(name)


def status(name):
    return dmsetup("status", name).stdout.strip()


def table(name):
    return dmsetup("table", name).stdout.strip()


def info(name):
    return dmsetup("info", name).stdout


def message(name, *msg, sector=0):
    """dmsetup message <name> <sector> <msg...>; returns the target's reply (stdout)."""
    return dmsetup("message", name, sector, *msg).stdout.strip()


def suspend(name, *flags):
    dmsetup("suspend", *flags, name)


def resume(name):
    dmsetup("resume", name)


def reload(name, table):
    if not table.endswith("\n"):
        table += "\n"
    dmsetup("reload", name, input=table)


def dm_devices():
    """Names of all device-mapper devices."""
    p = dmsetup("ls", check=False)
    if "No devices found" in p.stdout or p.returncode != 0:
        return []
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


# ------------------------------------------------------------ data

def random_bytes(size, seed):
    """Deterministic pseudo-random bytes: the same (size, seed) always gives the same data.
    Chunked generation with one random.Random gives the same stream (used below)."""
    return random.Random(seed).randbytes(size)


def _chunks(size):
    done = 0
    while done < size:
        n = min(CHUNK, size - done)
        yield done, n
        done += n


def _open(path, flags, direct):
    if direct:
        flags |= os.O_DIRECT
    return os.open(str(path), flags | os.O_CLOEXEC, 0o644)


def write_bytes(path, data, offset=0, direct=False, fsync=False):
    """Write `data` at `offset` (O_DIRECT when direct: offset and length must be
    multiples of the logical block size)."""
    fd = _open(path, os.O_WRONLY | os.O_CREAT, direct)
    buf = mmap.mmap(-1, CHUNK)      # page-aligned, as O_DIRECT wants
    try:
        mv = memoryview(data)
        for pos, n in _chunks(len(data)):
            buf[:n] = mv[pos:pos + n]
            _pwrite_all(fd, buf, n, offset + pos)
        if fsync:
            os.fsync(fd)
    finally:
        buf.close()
        os.close(fd)


def _pwrite_all(fd, buf, n, off):
    # `with`: a write that fails must not leave the view held by the
    # traceback, or the caller's buf.close() raises BufferError over it.
    with memoryview(buf) as mv:
        done = 0
        while done < n:
            w = os.pwritev(fd, [mv[done:n]], off + done)
            if w <= 0:
                raise OSError(errno.EIO, "short write at offset %d" % (off + done))
            done += w


def write_random(path, size, seed, offset=0, direct=False, fsync=False):
    """Write random_bytes(size, seed) at `offset` of `path` (file or device), 1 MiB at
    a time; returns the sha256 hex digest of the data written."""
    rnd = random.Random(seed)
    h = hashlib.sha256()
    fd = _open(path, os.O_WRONLY | os.O_CREAT, direct)
    buf = mmap.mmap(-1, CHUNK)
    try:
        for pos, n in _chunks(size):
            data = rnd.randbytes(n)
            h.update(data)
            buf[:n] = data
            _pwrite_all(fd, buf, n, offset + pos)
        if fsync:
            os.fsync(fd)
    finally:
        buf.close()
        os.close(fd)
    return h.hexdigest()


def _read_into(fd, buf, n, off):
    """Read up to n bytes at off into buf; returns the count (short only at EOF)."""
    with memoryview(buf) as mv:     # released on an error too (as above)
        done = 0
        while done < n:
            r = os.preadv(fd, [mv[done:n]], off + done)
            if r == 0:
                break
            done += r
    return done


def read_bytes(path, size, offset=0, direct=False):
    """Read `size` bytes at `offset` (O_DIRECT when direct); shorter only at end of file."""
    fd = _open(path, os.O_RDONLY, direct)
    buf = mmap.mmap(-1, CHUNK)
    out = bytearray()
    try:
        for pos, n in _chunks(size):
            got = _read_into(fd, buf, n, offset + pos)
            out += buf[:got]
            if got < n:
                break
    finally:
        buf.close()
        os.close(fd)
    return bytes(out)


def verify_random(path, size, seed, offset=0, direct=False):
    """Check that `path` holds random_bytes(size, seed) at `offset`, 1 MiB at a time;
    AssertionError naming the first differing byte otherwise."""
    rnd = random.Random(seed)
    fd = _open(path, os.O_RDONLY, direct)
    buf = mmap.mmap(-1, CHUNK)
    try:
        for pos, n in _chunks(size):
            want = rnd.randbytes(n)
            got = _read_into(fd, buf, n, offset + pos)
            have = buf[:got]
            if have != want:
                if got < n and have == want[:got]:
                    raise AssertionError("%s: short read at offset %d: %d of %d bytes"
                                         % (path, offset + pos, got, n))
                i = next(i for i in range(got) if have[i] != want[i])
                raise AssertionError(
                    "%s: data differs at byte offset %d (sector %d): got %02x, want %02x (seed %r)"
                    % (path, offset + pos + i, (offset + pos + i) // SECTOR, have[i], want[i], seed))
    finally:
        buf.close()
        os.close(fd)


def sha256_of(path, size, offset=0, direct=False):
    """sha256 hex digest of `size` bytes at `offset` (chunked)."""
    h = hashlib.sha256()
    fd = _open(path, os.O_RDONLY, direct)
    buf = mmap.mmap(-1, CHUNK)
    try:
        for pos, n in _chunks(size):
            got = _read_into(fd, buf, n, offset + pos)
            h.update(buf[:got])
            if got < n:
                break
    finally:
        buf.close()
        os.close(fd)
    return h.hexdigest()


# ------------------------------------------------------------ kernel log

class Kmsg:
    """A reader of /dev/kmsg: mark() remembers the end of the log, new_lines() returns
    the records logged since (as "[   12.345678] text" lines, like dmesg)."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.lost = False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def mark(self):
        os.lseek(self.fd, 0, os.SEEK_END)
        self.lost = False

    def records(self):
        """(seq, line) of the records since the mark (or since opening)."""
        out = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:      # EPIPE: the ring overwrote records we had not read
                self.lost = True
                continue
            if not rec:
                break
            parsed = parse_kmsg_record(rec)
            if parsed:
                out.append(parsed)
        return out

    def new_lines(self):
        return [line for _, line in self.records()]


def parse_kmsg_record(rec):
    text = rec.decode("utf-8", "replace")
    head, _, body = text.partition(";")
    fields = head.split(",")
    if len(fields) < 3:
        return None
    seq, ts = int(fields[1]), int(fields[2])
    msg = body.split("\n", 1)[0]       # continuation lines are key=value metadata
    msg = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), msg)
    return seq, "[%5d.%06d] %s" % (ts // 1000000, ts % 1000000, msg)


def _all_records():
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    out = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue
            if not rec:
                break
            p = parse_kmsg_record(rec)
            if p:
                out.append(p)
    finally:
        os.close(fd)
    return out


def next_seq():
    """Sequence number the next kernel log record will get."""
    recs = _all_records()
    return recs[-1][0] + 1 if recs else 0


def kmsg_pos():
    """A position in the kernel log, for kmsg_since()."""
    return next_seq()


def kmsg_since(pos):
    """Kernel log lines logged since kmsg_pos() returned `pos`."""
    return [line for seq, line in _all_records() if seq >= pos]


def kmsg_faults(lines):
    """Fault report (str, '' when clean) for kernel log lines, per debug/faults.py."""
    return faults.fault_report(lines)


def kmsg(text):
    """Write a line into the kernel log (handy to delimit test phases)."""
    with open("/dev/kmsg", "w") as f:
        f.write(text.rstrip("\n") + "\n")


def info_dict(text):
    """`key: value` lines (the target's `info` message and debugfs file) as
    a dict, numbers as int."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        out[key.strip()] = int(value) if value.isdigit() else value
    return out


def target_info(name):
    """The target's `info` message as a dict (numbers as int)."""
    return info_dict(message(name, "info"))


def write_probe(path):
    """Rewrite one byte of the file with itself (a write that changes
    nothing): None if the file takes it, else the errno (ETXTBSY: pinned
    like an active swapfile)."""
    try:
        fd = os.open(str(path), os.O_RDWR)
    except OSError as e:
        return e.errno
    try:
        first = os.pread(fd, 1, 0)
        os.pwrite(fd, first, 0)
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


# ---------------------------------------------------------------- fragmented files

_libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def punch_hole(fd, offset, length):
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                       ctypes.c_long(offset), ctypes.c_long(length)):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _mount_source(mp):
    with open("/proc/self/mounts") as f:
        return [line.split()[0] for line in f if line.split()[1] == str(mp)][0]


def ext4_knob(mp, name):
    """The sysfs path of ext4 tunable `name` for the filesystem mounted at `mp`."""
    return "/sys/fs/ext4/%s/%s" % (os.path.basename(os.path.realpath(_mount_source(mp))), name)


def _fill(mp, fillers, blk):
    """One pass of filling free space with preallocated files, biggest first;
    returns how many were added."""
    added = 0
    for chunk in (64 << 20, 1 << 20, blk):
        while True:
            path = Path(mp) / ("filler%d" % len(fillers))
            try:
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            except OSError:         # XFS: no room left for a new inode chunk
                break
            try:
                os.posix_fallocate(fd, 0, chunk)
            except OSError:
                os.close(fd)
                os.unlink(path)
                break
            os.close(fd)
            fillers.append((path, chunk))
            added += 1
    return added


def fragment_free_space(mp, holes, blk, hole=None):
    """Fill the filesystem at `mp` with preallocated filler files, then punch
    `holes` isolated holes of `hole` bytes (default: one block) into the
    big ones, a hole's length apart: a file written next can only be
    scattered over them.  Returns the filler paths."""
    hole = hole or blk
    # ext4 keeps clusters back for metadata (reserved_clusters): free on disk,
    # so a file written later could land there contiguously.  Keep only a few.
    resv = ext4_knob(mp, "reserved_clusters")
    if os.path.exists(resv):
        with open(resv, "w") as f:
            f.write("8")
    fillers = []
    # Blocks freed by a failed fallocate are reusable only once the journal
    # commits: sync and fill again until nothing more fits.
    while _fill(mp, fillers, blk):
        os.sync()
    big = [p for p, c in fillers if c == 64 << 20]
    per_file = (64 << 20) // (2 * hole)
    assert per_file and len(big) * per_file >= holes, \
        "scratch filesystem too small for %d holes of %d bytes" % (holes, hole)
    for n, path in enumerate(big[:(holes + per_file - 1) // per_file]):
        fd = os.open(path, os.O_WRONLY)
        try:
            for i in range(min(per_file, holes - n * per_file)):
                try:
                    punch_hole(fd, (2 * i + 1) * hole, hole)
                except OSError as e:
                    # Splitting the filler's extents needs tree blocks; on
                    # a full filesystem they come from the holes already
                    # punched, once the journal has committed them.
                    if e.errno != errno.ENOSPC:
                        raise
                    os.sync()
                    punch_hole(fd, (2 * i + 1) * hole, hole)
        finally:
            os.close(fd)
    # Freed blocks stay busy until the journal (log) commits: until then
    # ext4 and XFS would only find the space they keep in reserve.
    os.sync()
    return [p for p, _ in fillers]


def write_fragmented(mp, path, data, blk):
    """Create `path` holding `data` (a whole number of blocks) scattered over
    single free blocks: fragment the free space, write the file one block at
    a time with O_DIRECT (so that each block is allocated on its own, next
    to the last: delayed allocation would look for one run for all, and XFS
    may find one in its per-AG reserve), fsync it, then delete the fillers
    so the filesystem is usable again.  The file is created first: a full
    XFS has no room for a new inode."""
    os.close(os.open(str(path), os.O_CREAT | os.O_WRONLY, 0o644))
    fillers = fragment_free_space(mp, 2 * len(data) // blk, blk)
    buf = mmap.mmap(-1, blk)
    try:
        fd = os.open(str(path), os.O_WRONLY | os.O_DIRECT)
        try:
            for pos in range(0, len(data), blk):
                buf[:] = data[pos:pos + blk]
                if os.pwrite(fd, buf, pos) != blk:
                    raise OSError("short write to %s at %d" % (path, pos))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        buf.close()
        for p in fillers:
            os.unlink(p)
        os.sync()
