#!/usr/bin/python3
"""dm-loop benchmark, run inside the VM by `make bench` (debug/bench).

Every stack is measured over the same backing storage in the same boot, one
stack at a time, the order of stacks rotated between repetitions; each
figure is the median of the repetitions (min and max kept).  Absolute
numbers under QEMU TCG mean little: the ratios between stacks are the result.

Stacks over one fully written file on ext4 on a scratch disk (/dev/vda):
  linear        dm-linear over the file's blocks, from FIEMAP (fs unmounted)
  dmloop-block  dm-loop, block mode
  dmloop-dio    dm-loop, file mode, direct I/O (force_file)
  dmloop-buf    dm-loop, file mode, buffered (force_file no_direct_io)
  loop-buf      /dev/loop, buffered
  loop-dio      /dev/loop, --direct-io=on
  file          fio on the file itself, O_DIRECT
The same single fio process then runs the 2025 dm-devel benchmark (brd
ramdisk, ext4, 512 MiB file, fio psync, 4 KiB, 16 jobs, mixed read/write)
over dm-loop (block and file mode), /dev/loop and the file.  Last, 4 KiB
random reads at queue depth 32 through io_uring (O_DIRECT) on dm-linear and
block mode over the fio phase's file: io_uring submits from the calling
task with REQ_NOWAIT only when the device takes NOWAIT bios (dm: every
target has DM_TARGET_NOWAIT), else it hands each read to an io-wq worker,
which libaio never shows.  CPU time
per I/O is the whole guest's busy time (kernel workers included) over each
job's run.

Then setup cost (contiguous and fragmented files, next to dm-linear over
the same extents, filefrag with and without -v, and losetup) and scale
(tests/bench/scale: N dm-loop, dm-linear and /dev/loop devices from one
program).

Any stack or phase that fails makes the run fail (exit 1) after the other
phases ran; raw.json lists the errors, never a zero row in their place.
"""
import argparse
import bisect
import ctypes
import errno
import fcntl
import glob
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "guest"))
import dmloop  # noqa: E402  (tests/guest/dmloop.py: the fragmenter)

# The module under test (--ko; debug/vm does not pass the host's
# environment into the guest, so DMLOOP_KO only works from a guest shell).
KO = os.environ.get("DMLOOP_KO", os.path.join(REPO, "module", "dm-loop.ko"))
MNT = "/mnt/bench"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# (name, fio rw, block size, queue depth)
SEQR1, SEQR32 = ("seqread-1M", "read", "1M", 1), ("seqread-1M", "read", "1M", 32)
SEQW1, SEQW32 = ("seqwrite-1M", "write", "1M", 1), ("seqwrite-1M", "write", "1M", 32)
RR1, RR32 = ("randread-4k", "randread", "4k", 1), ("randread-4k", "randread", "4k", 32)
RW1, RW32 = ("randwrite-4k", "randwrite", "4k", 1), ("randwrite-4k", "randwrite", "4k", 32)

# Quick mode (CI, `make check`): every stack and every target's figure, at
# queue depth 32 only, 1 s per fio job, 2 repetitions (not 3: CI time, with
# the two `workers 1` stacks added), setup cost over one contiguous and
# one fragmented file, scale at N=1000.  Full mode: everything the issue
# lists.  "uring": the io_uring group's workloads (dm-linear and block mode
# only, the fio phase's runtime and repetitions).
MODES = {
    "quick": {
        "file_size": 64 * MiB, "reps": 2, "runtime": 1,
        "workloads": [SEQR32, SEQW32, RR32, RW32],
        "uring": [RR32],
        "brd_runtime": 1,
        # (size, piece): contiguous at two sizes (1:16, as the full mode's
        # 1 and 16 GiB), and a piece per extent
        "setup": [(4 * MiB, None), (64 * MiB, None), (4 * MiB, 4 * KiB)],
        "scale_n": 1000,
    },
    "full": {
        "file_size": 1 * GiB, "reps": 3, "runtime": 8,
        "workloads": [SEQR1, SEQR32, SEQW1, SEQW32, RR1, RR32, RW1, RW32],
        "uring": [RR32],
        "brd_runtime": 10,
        "setup": [(1 * GiB, None), (4 * GiB, None), (16 * GiB, None),
                  (1 * GiB, 4 * KiB), (4 * GiB, 16 * KiB), (16 * GiB, 64 * KiB)],
        "scale_n": 100000,
    },
}
# Each setup-cost figure is the median of this many measurements (every
# create cold: caches dropped before it).
SETUP_REPS = 3
# Worker processes of tests/bench/scale: under TCG a create or remove waits
# mostly for RCU grace periods, which more workers overlap (at N=500, 16
# workers removed 25-40% faster than 4).
SCALE_WORKERS = 16

ERRORS = []
PHASES = {}
PROFILE = {}
SAVE = []           # [function]: write raw.json so far (after every phase)
T0 = time.monotonic()


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    if check and p.returncode:
        raise RuntimeError("%s failed (%d): %s" % (cmd, p.returncode, p.stderr.strip()))
    return p


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class phase:
    """Time a phase of the run; an exception ends the phase, not the run."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t0 = time.monotonic()
        log("== %s" % self.name)
        return self

    def __exit__(self, typ, val, tb):
        PHASES[self.name] = round(time.monotonic() - self.t0, 1)
        log("== %s: %.1f s" % (self.name, PHASES[self.name]))
        if SAVE:
            SAVE[0]()
        if val is not None and isinstance(val, Exception):
            ERRORS.append("%s: %s" % (self.name, val))
            log("bench: phase %s FAILED: %s" % (self.name, val))
            return True
        return False


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def drop_file_cache(path):
    """Write back and drop one file's page cache: between two stacks only
    the backing file's cache matters (the buffered stacks read and write
    through it).  drop_caches would also drop the guest's root filesystem
    (9p from the host), which every exec after it then reads back."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def busy_jiffies(stat="/proc/stat"):
    with open(stat) as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return sum(v) - v[3] - v[4]          # all but idle and iowait


def file_extents(path):
    """(logical, physical, length) in bytes from filefrag -v -b512 -e."""
    out = sh(["filefrag", "-v", "-b512", "-e", path]).stdout
    ext = []
    for line in out.splitlines():
        parts = line.replace("..", " ").replace(":", " ").split()
        if len(parts) >= 6 and parts[0].isdigit():
            lstart, pstart, length = int(parts[1]), int(parts[3]), int(parts[5])
            ext.append((lstart * 512, pstart * 512, length * 512))
    return ext


# ------------------------------------------------------------ devices
# Stacks are set up from this process with the kernel's ioctls: under TCG
# every exec of dmsetup or losetup costs one to several seconds, far more
# than the kernel's own work.

DM_IOCTL_SIZE = 312                     # struct dm_ioctl
DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD = 3, 4, 6, 9
DM_READONLY_FLAG = 1


class Table:
    """A table packed as DM_TABLE_LOAD takes it (struct dm_target_spec and
    its parameters, one after another): packed before a timed create, so
    that a table of 262,144 lines costs the timing no Python."""

    def __init__(self, table):
        specs = []
        for line in table.strip().splitlines():
            start, length, ttype, params = line.split(None, 3)
            p = params.encode() + b"\0"
            size = 40 + (len(p) + 7) // 8 * 8
            specs.append(struct.pack("=QQiI16s", int(start), int(length), 0, size,
                                     ttype.encode()) + p.ljust(size - 40, b"\0"))
        self.count, self.specs = len(specs), b"".join(specs)


def dm_ioctl(cmd, name, flags=0, table=None):
    """One device-mapper ioctl on /dev/mapper/control; returns dev_t."""
    count, specs = (table.count, table.specs) if table else (0, b"")
    size = DM_IOCTL_SIZE + len(specs) + 4096
    buf = bytearray(struct.pack("=3IIIIiIIIQ128s129s7s", 4, 0, 0, size, DM_IOCTL_SIZE,
                                count, 0, flags, 0, 0, 0, name.encode(), b"", b""))
    buf += specs
    buf += bytes(4096)
    fd = os.open("/dev/mapper/control", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0xC138FD00 | cmd, buf, True)
    finally:
        os.close(fd)
    return struct.unpack_from("=Q", buf, 40)[0]


def dm_create(name, table, readonly=False):
    """Create and resume a dm device from table lines (or a Table);
    returns /dev/dm-N."""
    if not isinstance(table, Table):
        table = Table(table)
    flags = DM_READONLY_FLAG if readonly else 0
    dev = dm_ioctl(DM_DEV_CREATE, name, flags)
    try:
        dm_ioctl(DM_TABLE_LOAD, name, flags, table)
        dm_ioctl(DM_DEV_SUSPEND, name)          # no suspend flag: resume
    except OSError:
        dm_ioctl(DM_DEV_REMOVE, name)
        raise
    return "/dev/dm-%d" % os.minor(dev)


def dm_remove(name):
    for _ in range(50):
        try:
            dm_ioctl(DM_DEV_REMOVE, name)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.1)
    dm_ioctl(DM_DEV_REMOVE, name)


LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_CTL_GET_FREE = 0x4C01, 0x4C0A, 0x4C82
LO_FLAGS_DIRECT_IO = 16


def losetup(img, dio):
    """Attach img to a free /dev/loop (LOOP_CONFIGURE); returns its path."""
    ctl = os.open("/dev/loop-control", os.O_RDWR)
    try:
        nr = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    finally:
        os.close(ctl)
    dev = "/dev/loop%d" % nr
    cfg = bytearray(304)                        # struct loop_config
    fd = os.open(img, os.O_RDWR)
    lfd = os.open(dev, os.O_RDWR)
    try:
        struct.pack_into("=I", cfg, 0, fd)
        struct.pack_into("=I", cfg, 60, LO_FLAGS_DIRECT_IO if dio else 0)
        fcntl.ioctl(lfd, LOOP_CONFIGURE, cfg)
    finally:
        os.close(fd)
        os.close(lfd)
    with open("/sys/block/loop%d/loop/dio" % nr) as f:
        if f.read().strip() != ("1" if dio else "0"):
            losetup_detach(dev)
            raise RuntimeError("%s: direct I/O is not %s" % (dev, "on" if dio else "off"))
    return dev


def losetup_detach(dev):
    fd = os.open(dev, os.O_RDWR)
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    finally:
        os.close(fd)


class Stack:
    """A device over the backing file: up() returns its path, down() undoes.
    backing: the file whose page cache is dropped before up() (None when
    the filesystem is not mounted while the stack is up)."""

    def __init__(self, name, up, down, backing=None):
        self.name, self.up, self.down, self.backing = name, up, down, backing


def loop_stack(name, img, dio):
    dev = {}

    def up():
        dev["d"] = losetup(img, dio)
        return dev["d"]
    return Stack(name, up, lambda: losetup_detach(dev["d"]), img)


def dmloop_stack(name, img, size, opts):
    table = "0 %d loop %s 0%s" % (size // 512, img, opts)
    return Stack(name, lambda: dm_create("b-" + name, table), lambda: dm_remove("b-" + name), img)


def coalesce(segments):
    """(dev_sector, sectors, host_sector) runs, each run that continues the
    one before it on both sides merged into it."""
    out = []
    for dev, n, host in segments:
        if out and out[-1][0] + out[-1][1] == dev and out[-1][2] + out[-1][1] == host:
            out[-1][1] += n
        else:
            out.append([dev, n, host])
    return [tuple(x) for x in out]


def linear_segments(extents, size):
    """The file's first `size` bytes as coalesced (dev_sector, sectors,
    host_sector) from its extents (file_extents()); an error when they do
    not cover it without a hole."""
    seg = []
    for logical, physical, length in extents:
        if logical >= size:
            break
        length = min(length, size - logical)
        seg.append((logical // 512, length // 512, physical // 512))
    seg = coalesce(seg)
    if sum(n for _, n, _ in seg) * 512 != size or \
            any(a[0] + a[1] != b[0] for a, b in zip(seg, seg[1:])) or (seg and seg[0][0]):
        raise RuntimeError("FIEMAP does not cover %d bytes without a hole" % size)
    return seg


def linear_table(seg, disk):
    """dm-linear lines, one per segment, on the filesystem's disk."""
    return "\n".join("%d %d linear %s %d" % (dev, n, disk, host) for dev, n, host in seg)


def file_stacks(disk, img, size):
    """The stacks over one file; dm-linear maps the file's blocks (FIEMAP,
    read while the filesystem is mounted) with the filesystem unmounted."""
    try:
        table = linear_table(linear_segments(file_extents(img), size), disk)
    except RuntimeError as e:
        raise RuntimeError("%s: %s" % (img, e))

    def linear_up():
        sh(["umount", MNT])
        return dm_create("b-linear", table)

    def linear_down():
        dm_remove("b-linear")
        sh(["mount", disk, MNT])

    return [Stack("linear", linear_up, linear_down),
            dmloop_stack("dmloop-block", img, size, " 1 require_block"),
            dmloop_stack("dmloop-dio", img, size, " 1 force_file"),
            dmloop_stack("dmloop-dio-w1", img, size, " 3 force_file workers 1"),
            dmloop_stack("dmloop-buf", img, size, " 2 force_file no_direct_io"),
            dmloop_stack("dmloop-buf-w1", img, size, " 4 force_file no_direct_io workers 1"),
            loop_stack("loop-buf", img, False),
            loop_stack("loop-dio", img, True),
            file_stack(img)]


def file_stack(img):
    st = Stack("file", lambda: img, lambda: None, img)
    st.img = img
    return st


URING_STACKS = ("linear", "dmloop-block")


def uring_group(fs_stacks, m):
    """The io_uring group: dm-linear and block mode over the fio phase's
    file (new Stack objects: run_fio keys a stack by its group), the fio
    phase's runtime and repetitions, ioengine=io_uring with O_DIRECT."""
    stacks = [Stack(st.name, st.up, st.down, st.backing) for st in fs_stacks
              if st.name in URING_STACKS]
    return (stacks, m["uring"], m["reps"],
            {"ioengine": "io_uring", "direct": 1, "runtime": m["runtime"],
             "size": m["file_size"]})


# ------------------------------------------------------------ fio
# fio takes five seconds or more to start under TCG (it links some sixty
# libraries), so one fio process runs everything: every stack, repetition
# and workload is a stonewalled job, in order.  The first job of a stack
# has an `exec_prerun` that writes "switch JOB STACK" to a fifo and waits
# for this process to take the last stack down and bring STACK up; the
# stack's jobs open a symlink that the switch points at its device.  fio
# sizes a job's file (setup_files, create_serialize=0) before exec_prerun
# but opens it for I/O after: until the switch the symlink points at a
# placeholder block device at least as large as the jobs' size.  (A null
# job per switch cost 0.3-0.8 s more each under TCG: fio's main loop polls
# every 100 ms.)  A job of several clones (numjobs, the brd benchmark)
# would switch once per clone: a null job before it switches instead.  Each job's iops log (epoch time stamps) gives its window
# on a /proc/stat sampler.

CTL = "/tmp/bench-ctl"


class CpuSampler(threading.Thread):
    """The guest's busy jiffies every 50 ms, so that each fio job gets the
    CPU time of its own run (kernel workers included) without a process
    spawned per job to read /proc/stat."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.samples.append((time.time(), busy_jiffies()))
            self.done.wait(0.05)
        self.samples.append((time.time(), busy_jiffies()))

    def busy_jiffies_between(self, t0, t1):
        def at(t):
            s = self.samples
            i = bisect.bisect_left(s, (t,))
            if i == 0:
                return s[0][1]
            if i == len(s):
                return s[-1][1]
            (ta, ja), (tb, jb) = s[i - 1], s[i]
            return ja + (jb - ja) * (t - ta) / max(tb - ta, 1e-9)
        return at(t1) - at(t0)


def job_end(job):
    """Epoch time of the job's last I/O completion, from its iops logs (one
    per clone, an entry per I/O); the job ran `runtime` seconds up to it."""
    end = None
    for path in glob.glob(os.path.join(CTL, job + "_iops.*.log")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    t = int(line.split(",", 1)[0]) / 1000.0
                    end = t if end is None else max(end, t)
    return end


class Controller(threading.Thread):
    def __init__(self, stacks, placeholder):
        super().__init__(daemon=True)
        self.placeholder = placeholder
        self.stacks = {st.key: st for st in stacks}
        self.failed = {}           # stack key -> error text
        self.t_switch = {}         # stack key -> [seconds to bring up]
        self.switches = []         # (monotonic time of the request, seconds to answer)
        self.up = None
        for f in ("req", "ack"):
            os.mkfifo(os.path.join(CTL, f))

    def answer(self, text):
        with open(os.path.join(CTL, "ack"), "w") as f:
            f.write(text + "\n")

    def run(self):
        while True:
            with open(os.path.join(CTL, "req")) as f:
                reqs = [l.split() for l in f.read().splitlines() if l.strip()]
            for words in reqs:
                t0 = time.monotonic()
                try:
                    text = self.switch(words[2]) if words[0] == "switch" else "fail"
                except Exception as e:            # never leave fio waiting
                    self.failed.setdefault(words[2], "switch: %s" % e)
                    text = "fail"
                self.answer(text)
                self.switches.append((t0, time.monotonic() - t0))

    def switch(self, to):
        if self.up is not None:
            st, self.up = self.up, None
            try:
                st.down()
            except Exception as e:
                self.failed.setdefault(st.key, "down: %s" % e)
                log("bench: %s down FAILED: %s" % (st.key, e))
            link = os.path.join(CTL, st.key)
            if os.path.islink(link):          # its next first job sizes this
                os.unlink(link)
                os.symlink(self.placeholder, link)
        if to == "-":
            return "ok"
        st = self.stacks[to]
        link = os.path.join(CTL, st.key)
        if st.key in self.failed:
            return "fail"
        t0 = time.monotonic()
        try:
            for prep in getattr(st, "before", ()):
                prep()
            if st.backing:
                drop_file_cache(st.backing)
            else:
                os.sync()
            dev = st.up()
        except Exception as e:
            self.failed[st.key] = "up: %s" % e
            log("bench: %s up FAILED: %s" % (st.key, e))
            return "fail"
        self.up = st
        self.t_switch.setdefault(st.key, []).append(time.monotonic() - t0)
        log("bench: %.0f s: %s up in %.1f s" % (time.monotonic() - T0, st.key,
                                                time.monotonic() - t0))
        if os.path.islink(link):
            os.unlink(link)
            os.symlink(dev, link)
        return "ok"


def run_fio(groups, placeholder):
    """groups: [(stacks, workloads, reps, fio options)], each group's stacks
    in an order rotated per repetition.  Returns {(group, stack, workload,
    qd): [results]}; a failed stack is in ERRORS, not in the results."""
    sh(["rm", "-rf", CTL])
    os.makedirs(CTL)
    with open(os.path.join(CTL, "say"), "w") as f:
        f.write('#!/bin/sh\necho "$*" > %s/req\nread a < %s/ack\ntest "$a" = ok\n' % (CTL, CTL))
    os.chmod(os.path.join(CTL, "say"), 0o755)
    lines = ["[global]", "thread", "create_serialize=0", "stonewall", "group_reporting",
             "randrepeat=0", "norandommap", "zero_buffers"]
    stacks, order = [], []          # order: (job, group, stack key, workload or None)
    for g, (gstacks, workloads, reps, opts) in enumerate(groups):
        for st in gstacks:
            st.key = "g%d-%s" % (g, st.name)
            stacks.append(st)
            if st.name != "file":
                os.symlink(placeholder, os.path.join(CTL, st.key))
        for rep in range(reps):
            rot = gstacks[rep % len(gstacks):] + gstacks[:rep % len(gstacks)]
            for st in rot:
                path = st.img if st.name == "file" else os.path.join(CTL, st.key)
                cloned = int(opts.get("numjobs", 1)) > 1
                if cloned:          # every clone would run exec_prerun
                    job = "sw-%d" % len(order)
                    lines += ["[%s]" % job, "ioengine=null", "size=4k", "rw=read",
                              "filename=/dev/null",
                              "exec_prerun=%s/say switch %s %s" % (CTL, job, st.key)]
                    order.append((job, g, st.key, None))
                for i, (name, rw, bs, qd) in enumerate(workloads):
                    job = "j%d-%s-%s-qd%d" % (len(order), st.key, name, qd)
                    lines += ["[%s]" % job, "filename=%s" % path, "rw=%s" % rw, "bs=%s" % bs,
                              "iodepth=%d" % qd, "time_based", "log_unix_epoch=1",
                              "write_iops_log=%s/%s" % (CTL, job)]
                    if i == 0 and not cloned:
                        lines.append("exec_prerun=%s/say switch %s %s" % (CTL, job, st.key))
                    lines += ["%s=%s" % kv for kv in opts.items()]
                    order.append((job, g, st.key, (name, qd)))
    lines += ["[end]", "ioengine=null", "size=4k", "rw=read", "filename=/dev/null",
              "exec_prerun=%s/say switch end -" % CTL]
    with open(os.path.join(CTL, "jobs.fio"), "w") as f:
        f.write("\n".join(lines) + "\n")
    ctl = Controller(stacks, placeholder)
    ctl.start()
    cpu = CpuSampler()
    cpu.start()
    t0 = time.monotonic()
    try:
        p = sh(["fio", "--output-format=json", "jobs.fio"], check=False, cwd=CTL, timeout=7200)
    finally:
        cpu.done.set()
        cpu.join()
    wall = time.monotonic() - t0
    log("fio: %d jobs in %.1f s" % (len(order), wall))
    if ctl.up is not None:
        ctl.switch("-")
    try:
        out = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        raise RuntimeError("fio failed (%d): %s" % (p.returncode, p.stderr.strip()[-800:]))
    jobs = {j["jobname"]: j for j in out["jobs"]}
    opts_of = [opts for _, _, _, opts in groups]
    hz = os.sysconf("SC_CLK_TCK")
    res = {}
    bad = dict(ctl.failed)
    for job, g, key, wl in order:
        if wl is None or key in bad:
            continue
        j = jobs.get(job)
        ios = j and j["read"]["total_ios"] + j["write"]["total_ios"]
        end = job_end(job)
        if not j or j.get("error") or not ios or not end:
            bad[key] = "fio job %s: error %s, %s I/Os%s" % (
                job, j and j.get("error"), ios, "" if end else ", no iops log")
            continue
        win = (end - float(opts_of[g]["runtime"]), end)
        res.setdefault((g, key.split("-", 1)[1]) + wl, []).append({
            "mib_s": (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / MiB,
            "iops": j["read"]["iops"] + j["write"]["iops"],
            "cpu_us_per_io": cpu.busy_jiffies_between(*win) / hz * 1e6 / ios})
    for key, err in bad.items():
        ERRORS.append("%s: %s" % (key, err))
        g, name = key.split("-", 1)
        for k in [k for k in res if k[0] == int(g[1:]) and k[1] == name]:
            del res[k]
    if p.returncode and not bad:
        ERRORS.append("fio exit %d: %s" % (p.returncode, p.stderr.strip()[-800:]))
    for key, ts in ctl.t_switch.items():
        log("bench: %s set up in %s s" % (key, " ".join("%.1f" % t for t in ts)))
    # Where the fio phase's time went: fio's own start (to the first
    # switch), the jobs' measured runtime, the stack switches (this
    # process: previous stack down, cache dropped, next stack up), and the
    # rest (fio's start and end of each job, the switch jobs, the shell
    # that asks for a switch).
    work = [len([1 for _, g2, _, wl in order if wl is not None and g2 == g]) * float(o["runtime"])
            for g, o in enumerate(opts_of)]
    prof = {"wall_s": wall, "jobs": len([1 for o in order if o[3] is not None]),
            "switches": len(ctl.switches),
            "start_s": ctl.switches[0][0] - t0 if ctl.switches else None,
            "runtime_s": sum(work), "switch_s": sum(d for _, d in ctl.switches)}
    prof["other_s"] = wall - (prof["start_s"] or 0) - prof["runtime_s"] - prof["switch_s"]
    PROFILE["fio"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in prof.items()}
    log("bench: fio profile %s" % PROFILE["fio"])
    return res


def write_file(path, size, chunk=4 * MiB):
    """A fully written file (block mode maps written blocks only)."""
    sh(["dd", "if=/dev/zero", "of=%s" % path, "bs=%d" % chunk, "count=%d" % (size // chunk),
        "oflag=direct", "conv=fsync", "status=none"])


def write_fragmented(path, size, piece):
    """A written file in pieces of `piece` bytes, each its own extent: the
    filesystem's free space is filled with preallocated files, holes of
    `piece` bytes are punched in them a piece apart (tests/guest/dmloop.py),
    and the file is written into the holes with large O_DIRECT writes.
    (Alternating small writes with a filler file took about 1 ms a piece
    under TCG, some 13 minutes for the full mode's files.)"""
    mp = os.path.dirname(path)
    resv = dmloop.ext4_knob(mp, "reserved_clusters")
    old = open(resv).read().strip()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    # A hole in 64 more for the extent tree blocks the file needs.
    holes = size // piece
    fillers = dmloop.fragment_free_space(mp, holes + holes // 64 + 16, 4 * KiB, hole=piece)
    chunk = 4 * MiB
    buf = mmap.mmap(-1, chunk)
    buf.write(b"\xa5" * chunk)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
        try:
            for off in range(0, size, chunk):
                n = min(chunk, size - off)
                if os.pwritev(fd, [memoryview(buf)[:n]], off) != n:
                    raise RuntimeError("short write to %s" % path)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        for p in fillers:
            os.unlink(p)
        os.sync()
        with open(resv, "w") as f:
            f.write(old + "\n")


def dm_info(name, dev):
    """The target's info (debugfs; `dmsetup message` when debugfs is not
    there: an exec that costs seconds under TCG after drop_caches)."""
    paths = glob.glob("/sys/kernel/debug/dm-loop/dm-%d-0-*/info" % int(dev.rsplit("-", 1)[1]))
    if len(paths) == 1:
        out = open(paths[0]).read()
    else:
        out = sh(["dmsetup", "message", name, "0", "info"]).stdout
    return dict(l.split(": ", 1) for l in out.splitlines() if ": " in l)


def debugfs_extents(dev):
    """A dm-loop device's extent table from debugfs, coalesced as
    linear_segments() gives the file's; None without debugfs."""
    paths = glob.glob("/sys/kernel/debug/dm-loop/dm-%d-0-*/extents" % int(dev.rsplit("-", 1)[1]))
    if len(paths) != 1:
        return None
    seg = []
    with open(paths[0]) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                _, d, n, h = line.split()
                seg.append((int(d), int(n), int(h)))
    return coalesce(seg)


LIBC = ctypes.CDLL(None, use_errno=True)


def umount(path):
    """umount(2) (no exec: under TCG one costs a second or more after
    drop_caches)."""
    if LIBC.umount2(path.encode(), 0):
        e = ctypes.get_errno()
        raise OSError(e, "umount %s: %s" % (path, os.strerror(e)))


def mount(dev, path, fstype="ext4"):
    if LIBC.mount(dev.encode(), path.encode(), fstype.encode(), 0, None):
        e = ctypes.get_errno()
        raise OSError(e, "mount %s %s: %s" % (dev, path, os.strerror(e)))


def setup_cost(sizes, disk, reps=SETUP_REPS):
    """Device creation time over contiguous and fragmented files, next to
    dm-linear over the same extents (from FIEMAP, created with the
    filesystem unmounted), filefrag (with and without -v) and losetup on
    the same file, and the extent table's size.  Each time is the median
    of `reps` measurements ("reps" keeps them all; filefrag without -v is
    timed once, as before); every dm-loop create is cold (caches dropped),
    the filefrag runs follow a warm-up exec."""
    rows = []
    for size, piece in sizes:
        img = os.path.join(MNT, "setup-img")
        t0 = t_row = time.monotonic()
        if piece:
            write_fragmented(img, size, piece)
        else:
            write_file(img, size)
        t_write = time.monotonic() - t0
        steps = {"write": t_write}
        name = "%d MiB %s" % (size // MiB, "%d KiB pieces" % (piece // KiB) if piece
                              else "contiguous")
        r = {k: [] for k in ("dmloop_create_s", "kernel_setup_ms", "dmloop_remove_s",
                             "linear_create_s", "filefrag_s", "filefrag_v_s", "losetup_s")}
        loop = Table("0 %d loop %s 0 1 require_block" % (size // 512, img))
        dm_seg = None
        for i in range(reps):
            drop_caches()
            t0 = time.monotonic()
            dev = dm_create("b-setup", loop)
            r["dmloop_create_s"].append(time.monotonic() - t0)
            try:
                info = dm_info("b-setup", dev)
                if i == 0:
                    dm_seg = debugfs_extents(dev)
            finally:
                t0 = time.monotonic()
                dm_remove("b-setup")
                r["dmloop_remove_s"].append(time.monotonic() - t0)
            r["kernel_setup_ms"].append(int(info["setup_ns"]) / 1e6)
        steps["dm-loop"] = time.monotonic() - t_row - t_write
        # dm-linear over the same extents: the mounted filesystem holds its
        # disk exclusively, so it is unmounted around the creates.
        seg = linear_segments(file_extents(img), size)
        linear = Table(linear_table(seg, disk))
        steps["fiemap"] = time.monotonic() - t_row - sum(steps.values())
        if dm_seg is not None and dm_seg != seg:
            diff = next((i for i, (a, b) in enumerate(zip(dm_seg, seg)) if a != b),
                        min(len(dm_seg), len(seg)))
            ERRORS.append("setup %s: dm-loop's extent table (debugfs, %d runs) is not the "
                          "file's FIEMAP (%d runs): run %d is %s in dm-loop, %s in FIEMAP" % (
                              name, len(dm_seg), len(seg), diff,
                              dm_seg[diff] if diff < len(dm_seg) else "-",
                              seg[diff] if diff < len(seg) else "-"))
            log("bench: " + ERRORS[-1])
        umount(MNT)
        try:
            drop_caches()
            for i in range(reps):
                t0 = time.monotonic()
                dm_create("b-setup-linear", linear)
                r["linear_create_s"].append(time.monotonic() - t0)
                dm_remove("b-setup-linear")
        finally:
            mount(disk, MNT)
        steps["linear"] = time.monotonic() - t_row - sum(steps.values())
        drop_caches()
        sh(["filefrag", img])                  # once to warm the exec, then timed
        t0 = time.monotonic()
        ff = sh(["filefrag", img]).stdout
        r["filefrag_s"].append(time.monotonic() - t0)
        for i in range(reps):
            t0 = time.monotonic()
            subprocess.run(["filefrag", "-v", img], stdout=subprocess.DEVNULL, check=True)
            r["filefrag_v_s"].append(time.monotonic() - t0)
        for i in range(reps):
            t0 = time.monotonic()
            d = losetup(img, False)
            r["losetup_s"].append(time.monotonic() - t0)
            losetup_detach(d)
        steps["filefrag, losetup"] = time.monotonic() - t_row - sum(steps.values())
        extents = int(info["extents"])
        ff_extents = int(ff.split(":")[-1].split()[0])

        def m(k, nd=4):
            return round(statistics.median(r[k]), nd)
        rows.append({"file": "%d MiB" % (size // MiB),
                     "layout": "%d KiB pieces" % (piece // KiB) if piece else "contiguous",
                     "walk": info.get("walk", "-"),
                     "extents": extents, "filefrag_extents": ff_extents,
                     "linear_segments": len(seg),
                     "table_bytes": int(info["table_bytes"]),
                     "bytes_per_extent": round(int(info["table_bytes"]) / max(extents, 1), 1),
                     "dmloop_create_s": m("dmloop_create_s"),
                     "linear_create_s": m("linear_create_s"),
                     "kernel_setup_ms": m("kernel_setup_ms", 2),
                     "dmloop_remove_s": m("dmloop_remove_s"),
                     "filefrag_s": m("filefrag_s"), "filefrag_v_s": m("filefrag_v_s"),
                     "losetup_s": m("losetup_s"),
                     "reps": {k: [round(x, 6) for x in v] for k, v in r.items()}})
        os.unlink(img)
        log("setup %s (%s)" % (rows[-1], ", ".join("%s %.1f s" % kv for kv in steps.items())))
    return rows


def brd_prepare():
    """The 2025 dm-devel benchmark's storage: ext4 on a brd ramdisk, with a
    512 MiB written file; returns the stacks over it."""
    size = 512 * MiB
    sh("modprobe brd rd_nr=1 rd_size=%d" % (640 * 1024))
    if not os.path.exists("/dev/ram0"):
        raise RuntimeError("modprobe brd made no /dev/ram0")
    sh(["mkfs.ext4", "-q", "-F", "/dev/ram0"])
    os.makedirs("/mnt/brd", exist_ok=True)
    sh(["mount", "/dev/ram0", "/mnt/brd"])
    img = "/mnt/brd/img"
    write_file(img, size)
    log("bench: %.0f s: brd ready" % (time.monotonic() - T0))
    return [dmloop_stack("dmloop-block", img, size, " 1 require_block"),
            dmloop_stack("dmloop-dio", img, size, " 1 force_file"),
            dmloop_stack("dmloop-dio-w1", img, size, " 3 force_file workers 1"),
            loop_stack("loop-buf", img, False),
            loop_stack("loop-dio", img, True),
            file_stack(img)]


def brd_cleanup():
    sh(["umount", "/mnt/brd"], check=False)
    sh("rmmod brd", check=False)


def scale(exe, n, disk2, workers=SCALE_WORKERS):
    """N devices of each kind from one program (tests/bench/scale)."""
    rows = []
    d = "/mnt/scale"
    os.makedirs(d, exist_ok=True)
    # Every dm device has a kdmflush workqueue with a rescuer thread: at the
    # default pid_max (32768) device 33,000 or so fails with ENXIO and fork()
    # with EAGAIN.  Room for every device's thread, and the guest's own.
    for knob, want in (("pid_max", 4 * n + 65536), ("threads-max", 4 * n + 65536)):
        path = "/proc/sys/kernel/" + knob
        with open(path) as f:
            have = int(f.read())
        if have < want:
            with open(path, "w") as f:
                f.write("%d\n" % min(want, 4194304))
    for kind in ("linear", "loop", "losetup"):
        t0 = time.monotonic()
        try:
            if kind == "linear":
                p = sh([exe, kind, str(n), disk2, str(workers)], check=False)
            else:
                sh(["mkfs.ext4", "-q", "-F", "-N", str(n + 1024), disk2])
                sh(["mount", disk2, d])
                try:
                    p = sh([exe, kind, str(n), d, str(workers)], check=False)
                finally:
                    sh(["umount", d], check=False)
            if p.returncode:
                raise RuntimeError(p.stderr.strip()[-500:] or "exit %d" % p.returncode)
            rows.append(json.loads(p.stdout))
            log("scale %s (%.1f s)" % (rows[-1], time.monotonic() - t0))
        except Exception as e:
            ERRORS.append("scale %s: %s" % (kind, e))
            log("scale %s FAILED: %s" % (kind, e))
    return rows


# ------------------------------------------------------------ sparse XFS
# Block mode over a sparse file on XFS (issue 22): each repetition brings
# every stack up over a new file and runs, in one fio process, a first
# pass of 1 MiB writes over the whole device (what fills the file; not
# time based), then 4 KiB random reads and writes at queue depth 32.
# Stacks: block mode over a fully written file (the reference), block mode
# over the sparse file, file mode (direct I/O) over the same sparse file.
SPARSE_STACKS = ("full-block", "sparse-block", "sparse-file")
SPARSE_WORKLOADS = (("fill-1M", "write", "1M", 32), RR32, RW32)


def sparse_run(name, dev, size, runtime):
    """fio's three jobs over dev: {(workload, qd): run}."""
    lines = ["[global]", "filename=%s" % dev, "ioengine=libaio", "direct=1", "stonewall",
             "randrepeat=0", "norandommap", "size=%d" % size, "group_reporting"]
    for wl, rw, bs, qd in SPARSE_WORKLOADS:
        lines += ["[%s]" % wl, "rw=%s" % rw, "bs=%s" % bs, "iodepth=%d" % qd]
        if not wl.startswith("fill"):
            lines += ["time_based", "runtime=%d" % runtime]
    job = "/tmp/bench-sparse.fio"
    with open(job, "w") as f:
        f.write("\n".join(lines) + "\n")
    t0 = busy_jiffies()
    p = sh(["fio", "--output-format=json", job], check=False, timeout=3600)
    busy = busy_jiffies() - t0
    try:
        jobs = json.loads(p.stdout[p.stdout.index("{"):])["jobs"]
    except ValueError:
        raise RuntimeError("fio failed (%d): %s" % (p.returncode, p.stderr.strip()[-800:]))
    out = {}
    for j, (wl, _, _, qd) in zip(jobs, SPARSE_WORKLOADS):
        ios = j["read"]["total_ios"] + j["write"]["total_ios"]
        if j.get("error") or not ios:
            raise RuntimeError("fio job %s: error %s, %d I/Os" % (wl, j.get("error"), ios))
        out[(wl, qd)] = {"mib_s": (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / MiB,
                         "iops": j["read"]["iops"] + j["write"]["iops"],
                         # the whole fio run's busy time, over every job's I/Os
                         "cpu_us_per_io": None}
    total = sum(j["read"]["total_ios"] + j["write"]["total_ios"] for j in jobs)
    for r in out.values():
        r["cpu_us_per_io"] = busy / os.sysconf("SC_CLK_TCK") * 1e6 / total
    return out


def sparse_phase(disk, size, reps, runtime):
    """The sparse XFS group's rows (as rows_json gives them); a failed
    stack is in ERRORS ("sparse-STACK: ..."), with no rows."""
    mnt = MNT + "-xfs"
    os.makedirs(mnt, exist_ok=True)
    sh(["mkfs.xfs", "-f", "-q", disk])
    sh(["mount", disk, mnt])
    res, bad = {}, {}
    full, img = os.path.join(mnt, "full"), os.path.join(mnt, "sparse")
    try:
        write_file(full, size)
        for rep in range(reps):
            rot = SPARSE_STACKS[rep % 3:] + SPARSE_STACKS[:rep % 3]
            for st in rot:
                if st in bad:
                    continue
                name = "b-" + st
                try:
                    path = full
                    if st != "full-block":
                        sh(["rm", "-f", img])
                        with open(img, "wb") as f:
                            f.truncate(size)
                        path = img
                    opts = " 1 force_file" if st == "sparse-file" else ""
                    dev = dm_create(name, "0 %d loop %s 0%s" % (size // 512, path, opts))
                    try:
                        status = sh(["dmsetup", "status", name]).stdout.split()
                        want = ("file" if st == "sparse-file" else "block")
                        # start length loop mode extents r w f splits reason
                        if status[3] != want or (st == "sparse-block" and
                                                 not status[-1].startswith("holes:")):
                            raise RuntimeError("status %s: not %s mode%s" % (
                                " ".join(status[3:]), want,
                                " with holes" if st == "sparse-block" else ""))
                        for k, run in sparse_run(st, dev, size, runtime).items():
                            res.setdefault(k, {}).setdefault(st, []).append(run)
                    finally:
                        dm_remove(name)
                except Exception as e:
                    bad[st] = str(e)
                    log("sparse %s FAILED: %s" % (st, e))
            log("bench: sparse repetition %d done" % (rep + 1))
    finally:
        sh(["umount", mnt], check=False)
    for st, err in bad.items():
        ERRORS.append("sparse-%s: %s" % (st, err))
    return [{"stack": st, "workload": wl, "qd": qd, "runs": runs}
            for (wl, qd), by in res.items() for st, runs in by.items() if st not in bad]


def module_id(ko):
    """Which module the run measured: its path and the start of its SHA-1."""
    import hashlib
    try:
        with open(ko, "rb") as f:
            sha = hashlib.sha1(f.read()).hexdigest()[:12]
    except OSError:
        sha = None
    return {"path": os.path.relpath(ko, REPO) if ko.startswith(REPO + "/") else ko,
            "sha1": sha}


def rows_json(res, group):
    return [{"stack": st, "workload": w, "qd": q, "runs": runs}
            for (g, st, w, q), runs in res.items() if g == group]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "build", "bench"))
    ap.add_argument("--scale-exe", default=os.path.join(REPO, "build", "bench", "scale"))
    ap.add_argument("--only", default="fio,brd,uring,setup,sparse,scale",
                    help="comma-separated phases to run (for development)")
    ap.add_argument("--ko", default=KO, help="the dm-loop module to insmod "
                    "(default: $DMLOOP_KO or module/dm-loop.ko)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mode = "quick" if a.quick else "full"
    m = MODES[mode]
    only = set(a.only.split(","))
    t_start = time.monotonic()

    sh(["insmod", a.ko], check=False)
    sh("modprobe loop; modprobe dm-mod", check=False)
    if not os.path.isdir("/sys/module/dm_loop"):
        sys.exit("bench: dm-loop is not loaded (%s)" % a.ko)
    disk, disk2 = "/dev/vda", "/dev/vdb"
    size = m["file_size"]
    out = {"kernel": os.uname().release, "mode": mode, "quick": a.quick, "reps": m["reps"],
           "runtime_s": m["runtime"], "brd_runtime_s": m["brd_runtime"], "file_size": size,
           "cpus": os.cpu_count(), "mem_kb": int(open("/proc/meminfo").readline().split()[1]),
           "module": module_id(a.ko),
           "fio": [], "brd": [], "uring": [], "setup": [], "sparse": [], "scale": [],
           "complete": False,
           # what the run set out to measure, so that the report can tell
           # a missing row from one never planned
           "plan": {"workloads": ["%s qd%d" % (w[0], w[3]) for w in m["workloads"]]
                    if "fio" in only else [],
                    "brd": "brd" in only,
                    "uring": ["%s qd%d" % (w[0], w[3]) for w in m["uring"]]
                    if "uring" in only else [],
                    "setup": len(m["setup"]) if "setup" in only else 0,
                    "sparse": ["%s qd%d" % (w[0], w[3]) for w in SPARSE_WORKLOADS]
                    if "sparse" in only else [],
                    "scale_n": m["scale_n"] if "scale" in only else 0,
                    # file mode with one worker a device beside the default
                    "w1": True}}

    def save():
        out["phases_s"] = PHASES
        out["profile"] = PROFILE
        out["guest_total_s"] = round(time.monotonic() - t_start, 1)
        out["errors"] = ERRORS
        with open(os.path.join(a.out, "raw.json.tmp"), "w") as f:
            json.dump(out, f, indent=1)
        os.rename(os.path.join(a.out, "raw.json.tmp"), os.path.join(a.out, "raw.json"))
    SAVE.append(save)

    os.makedirs(MNT, exist_ok=True)
    groups = []
    img = os.path.join(MNT, "img")
    with phase("disk"):
        sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", disk])
        sh(["mount", disk, MNT])
        log("bench: %.0f s: %s ready" % (time.monotonic() - T0, disk))
    # Setup cost first: it drops every cache (a cold bmap walk), which
    # would also drop fio's sixty libraries read over 9p.
    if "setup" in only:
        with phase("setup"):
            out["setup"] = setup_cost(m["setup"], disk)
    gi = {}                         # "fio", "brd", "uring" -> index in groups
    with phase("prepare"):
        warm = subprocess.Popen(["fio", "--version"], stdout=subprocess.DEVNULL)
        fs = None
        if "fio" in only or "uring" in only:
            write_file(img, size)
            log("bench: %.0f s: %s written" % (time.monotonic() - T0, img))
            fs = file_stacks(disk, img, size)
        if "fio" in only:
            gi["fio"] = len(groups)
            groups.append((fs, m["workloads"], m["reps"],
                           {"ioengine": "libaio", "direct": 1, "runtime": m["runtime"],
                            "size": size}))
        if "brd" in only:
            gi["brd"] = len(groups)
            groups.append((brd_prepare(), [("randrw-4k", "randrw", "4k", 1)], m["reps"],
                           {"ioengine": "psync", "direct": 1, "numjobs": 16, "rwmixread": 50,
                            "runtime": m["brd_runtime"], "size": 512 * MiB}))
        if "uring" in only:         # last: the fio and brd groups keep g0 and g1
            gi["uring"] = len(groups)
            groups.append(uring_group(fs, m))
        warm.wait()
    if groups:
        with phase("fio"):
            res = run_fio(groups, disk2)
            for name, g in gi.items():
                out[name] = rows_json(res, g)
        if "brd" in only:
            brd_cleanup()
        sh(["rm", "-f", img], check=False)
    sh(["umount", MNT], check=False)
    if "sparse" in only:
        with phase("sparse"):
            out["sparse"] = sparse_phase(disk, size, m["reps"], m["runtime"])
    if "scale" in only:
        with phase("scale"):
            out["scale"] = scale(a.scale_exe, m["scale_n"], disk2)

    out["complete"] = True
    save()
    log("bench: phases %s, %.0f s in all; raw results in %s"
        % (PHASES, out["guest_total_s"], os.path.join(a.out, "raw.json")))
    if ERRORS:
        log("bench: %d error(s):\n  %s" % (len(ERRORS), "\n  ".join(ERRORS)))
        sys.exit(1)


if __name__ == "__main__":
    main()
