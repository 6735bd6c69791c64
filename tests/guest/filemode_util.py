"""Helpers for the file-mode guest tests (test_file_mode.py).

Backing stores for file-mode devices (tmpfs, btrfs, the 9p-shared repository,
NFS v4 served by the guest's own nfsd over loopback, ext4/XFS files that are
sparse, preallocated or reflinked, an fscrypt-encrypted ext4 directory), the
target's counters, FIEMAP, and the fscrypt ioctls (no tooling needed).
Stdlib only.
"""

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import dmloop
from dmloop import target_info  # noqa: F401  (shared; the tests import it from here)

KiB = 1 << 10
MiB = 1 << 20
REPO = dmloop.REPO


# ------------------------------------------------------------ target state

def status_fields(name):
    """dmsetup status as a dict: mode, extents, reads, writes, flushes, splits, reason."""
    f = dmloop.status(name).split()
    assert f[2] == "loop", f
    return {"mode": f[3], "extents": int(f[4]), "reads": int(f[5]),
            "writes": int(f[6]), "flushes": int(f[7]), "splits": int(f[8]),
            "reason": f[9]}


def file_table(path, size, offset=0, opts=()):
    t = "0 %d loop %s %d" % (size // 512, path, offset)
    if opts:
        t += " %d %s" % (len(opts), " ".join(opts))
    return t


@contextlib.contextmanager
def loop_device(name, path, size, offset=0, opts=()):
    """A dm-loop device over `path`; removed at the end."""
    dev = dmloop.create(name, file_table(path, size, offset, opts))
    try:
        yield dev
    finally:
        if dmloop.exists(name):
            dmloop.remove(name)


def kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def queue_attr(dev, attr):
    """/sys/dev/block/<major>:<minor>/queue/<attr> of a block device node."""
    rdev = os.stat(dev).st_rdev
    with open("/sys/dev/block/%d:%d/queue/%s" % (os.major(rdev), os.minor(rdev), attr)) as f:
        return f.read().strip()


def allocated_bytes(path):
    return os.stat(path).st_blocks * 512


def fs_type(path):
    """Filesystem type of the mount holding `path` (longest mount-point match)."""
    path = os.path.realpath(str(path))
    best, fstype = "", None
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mp, t = line.split()[:3]
            mp = mp.replace("\\040", " ")
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                best, fstype = mp, t
    return fstype


# ------------------------------------------------------------ preparing files

def make_sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def make_fallocated(path, size):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def make_reflinked(path, size, seed):
    """`path` shares all its blocks with path.orig, which holds random_bytes(size, seed)."""
    orig = str(path) + ".orig"
    dmloop.write_random(orig, size, seed=seed, fsync=True)
    dmloop.run(["cp", "--reflink=always", orig, str(path)])
    return orig


# ------------------------------------------------------------ FIEMAP

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1


def fiemap(path):
    """[(logical, physical, length, flags)] of `path`, in bytes (after a sync)."""
    out = []
    start = 0
    count = 64
    fd = os.open(str(path), os.O_RDONLY)
    try:
        while True:
            hdr = struct.pack("=QQIIII", start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0,
                              count, 0)
            buf = bytearray(hdr + bytes(56 * count))
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


def read_on_disk(disk, extents, offset, size):
    """The bytes of a file at [offset, offset+size) as stored on the host disk
    `disk`, read with O_DIRECT through the file's `extents` (from fiemap(),
    taken beforehand: FIEMAP_FLAG_SYNC would write the file back): what a
    crash would leave.  None if part of the range is not allocated."""
    out = bytearray()
    pos = offset
    while pos < offset + size:
        ext = next((e for e in extents if e[0] <= pos < e[0] + e[2]), None)
        if ext is None:
            return None
        n = min(offset + size - pos, ext[0] + ext[2] - pos)
        out += dmloop.read_bytes(disk, n, offset=ext[1] + pos - ext[0], direct=True)
        pos += n
    return bytes(out)


# ------------------------------------------------------------ fscrypt (v2 policies)

FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER = 2
FSCRYPT_MODE_AES_256_XTS = 1
FSCRYPT_MODE_AES_256_CTS = 4


def fscrypt_encrypt_dir(mountpoint, directory, key=bytes(range(64))):
    """Add a v2 master key to the filesystem at `mountpoint` and set an
    AES-256-XTS/CTS policy on the empty `directory`; files created in it are
    encrypted.  Raises OSError when the kernel or filesystem refuses."""
    arg = bytearray(struct.pack("=II32sII32s", FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER, 0,
                                bytes(32), len(key), 0, bytes(32)) + key)
    fd = os.open(str(mountpoint), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    finally:
        os.close(fd)
    identifier = bytes(arg[8:24])
    policy = struct.pack("=BBBB4s16s", 2, FSCRYPT_MODE_AES_256_XTS,
                         FSCRYPT_MODE_AES_256_CTS, 0, bytes(4), identifier)
    fd = os.open(str(directory), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    finally:
        os.close(fd)


FS_ENCRYPT_FL = 0x800
FS_IOC_GETFLAGS = 0x80086601


def is_encrypted(path):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        return bool(struct.unpack("=l", buf[:4])[0] & FS_ENCRYPT_FL)
    finally:
        os.close(fd)


# ------------------------------------------------------------ NFS v4 over loopback

NFS_TOOLS = ("rpc.nfsd", "rpc.mountd", "exportfs", "mount.nfs4")


def nfs_missing():
    """Why the guest cannot serve NFS to itself ('' when it can)."""
    missing = [t for t in NFS_TOOLS if not shutil.which(t)]
    if missing:
        return ("NFS server userspace missing (%s): install Debian's nfs-kernel-server "
                "(make deps)" % ", ".join(missing))
    return ""


def _pids_of(exe):
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.path.basename(os.readlink("/proc/%s/exe" % p)) == exe:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def nfsd_start(export_dir, mountd):
    """Start the guest's kernel nfsd serving `export_dir` (fsid=0, loopback,
    v4 only); the rpc.mountd pids it starts are added to `mountd` as they
    come, so that nfsd_stop() can clean up after a failed start too."""
    dmloop.run(["ip", "link", "set", "lo", "up"])
    for m in ("nfsd", "nfsv4"):
        dmloop.modprobe(m, check=True)
    if not dmloop.is_mounted("/proc/fs/nfsd"):
        dmloop.run(["mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd"])
    for d in ("/var/lib/nfs", "/var/lib/nfs/v4recovery", "/run/rpc_pipefs"):
        os.makedirs(d, exist_ok=True)
    with open("/etc/exports", "w") as f:
        f.write("")
    before = set(_pids_of("rpc.mountd"))
    dmloop.run(["exportfs", "-o", "rw,sync,no_root_squash,insecure,fsid=0,no_subtree_check",
                "127.0.0.1:%s" % export_dir])
    dmloop.run(["rpc.mountd", "-N", "3"])
    mountd |= set(_pids_of("rpc.mountd")) - before
    for name in ("nfsv4leasetime", "nfsv4gracetime"):
        with open("/proc/fs/nfsd/" + name, "w") as f:
            f.write("10\n")
    dmloop.run(["rpc.nfsd", "-N", "3", "--no-udp", "-H", "127.0.0.1", "2"])
    # No client to reclaim state: leave the grace period now.
    with contextlib.suppress(OSError):
        with open("/proc/fs/nfsd/v4_end_grace", "w") as f:
            f.write("Y\n")


def nfsd_stop(mountd):
    """Stop nfsd, drop the exports, end the rpc.mountd pids nfsd_start added."""
    dmloop.run(["rpc.nfsd", "0"], check=False)
    dmloop.run(["exportfs", "-ua"], check=False)
    for pid in mountd:
        with contextlib.suppress(OSError):
            os.kill(pid, 15)
    mountd.clear()


def nfs_client_mount(mnt):
    """Mount the loopback server's root with the NFS v4 client (the highest
    minor version both kernels have: 7.2 and 6.12 here are built without
    v4.2 or v4.1)."""
    dmloop.run(["mount", "-t", "nfs4", "-o", "vers=4,proto=tcp,addr=127.0.0.1",
                "127.0.0.1:/", str(mnt)], timeout=120)


@contextlib.contextmanager
def nfs_export(export_dir):
    """Serve `export_dir` with the guest's kernel nfsd and mount it with the
    NFS client; yields the client's mount point."""
    mountd = set()
    mnt = Path(tempfile.mkdtemp(prefix="dmloop-nfs-", dir="/tmp"))
    try:
        nfsd_start(export_dir, mountd)
        nfs_client_mount(mnt)
        try:
            yield mnt
        finally:
            dmloop.umount(mnt)
    finally:
        nfsd_stop(mountd)
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


# ------------------------------------------------------------ tmpfs, 9p

@contextlib.contextmanager
def tmpfs_mount(size="512m"):
    mp = Path(tempfile.mkdtemp(prefix="dmloop-tmpfs-", dir="/tmp"))
    dmloop.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(mp)])
    try:
        yield mp
    finally:
        dmloop.umount(mp)
        os.rmdir(mp)


@contextlib.contextmanager
def ninep_dir():
    """A fresh directory on the repository's 9p share (the host's build/)."""
    if fs_type(REPO / "build") != "9p":
        import pytest
        pytest.skip("the repository is not a 9p mount in this guest (debug/vm shares it so)")
    # Unique across guests: make check runs two at once, and a guest's pids
    # repeat from boot to boot.
    d = Path(tempfile.mkdtemp(prefix="filemode-9p.", dir=REPO / "build"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------ fio

def fio(dev, *args, timeout=900, check=True, background=False):
    """Run fio on `dev` with `args` (strings "--x=y"); CompletedProcess, or the Popen
    when background."""
    cmd = ["fio", "--name=dmloop", "--filename=%s" % dev, "--output-format=normal"] + list(args)
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return dmloop.run(cmd, check=check, timeout=timeout)


def fio_errors(output):
    """The err= figure of fio's normal output (0 when the job reported no error)."""
    for line in output.splitlines():
        if "err=" in line:
            return int(line.split("err=")[1].split(":")[0].split()[0].rstrip(","))
    raise AssertionError("no err= line in fio output:\n%s" % output)


# ------------------------------------------------------------ cgroup v2

CGROOT = Path("/sys/fs/cgroup")


def enable_controllers(*controllers):
    """Mount cgroup2 at CGROOT when needed and enable `controllers` for its
    children; skip the test when the kernel lacks one."""
    if not (CGROOT / "cgroup.controllers").exists():
        os.makedirs(CGROOT, exist_ok=True)
        dmloop.run(["mount", "-t", "cgroup2", "none", str(CGROOT)])
    have = (CGROOT / "cgroup.controllers").read_text().split()
    missing = [c for c in controllers if c not in have]
    if missing:
        import pytest
        pytest.skip("cgroup v2 has no %s controller in this kernel" % ", ".join(missing))
    (CGROOT / "cgroup.subtree_control").write_text(" ".join("+" + c for c in controllers))


def remove_cgroup(cg):
    """rmdir a cgroup, retrying while its last processes exit."""
    for _ in range(50):
        try:
            cg.rmdir()
            break
        except OSError:
            time.sleep(0.2)


@contextlib.contextmanager
def memory_cgroup(name, max_bytes, swap_max="max"):
    """A cgroup v2 child with memory.max; mounts cgroup2 when needed."""
    enable_controllers("memory")
    cg = CGROOT / name
    cg.mkdir()
    try:
        (cg / "memory.max").write_text(str(max_bytes))
        (cg / "memory.swap.max").write_text(str(swap_max))
        yield cg
    finally:
        remove_cgroup(cg)


def cgroup_events(cg):
    return {k: int(v) for k, v in
            (line.split() for line in (cg / "memory.events").read_text().splitlines())}

