"""File mode's workers, and the cgroups its I/O is charged to.

A file-mode device serves its bios with up to `workers <n>` work items on
the module's workqueue (default: the module parameter `workers`, 4), each
taking the oldest waiting bio; and it runs each bio's I/O as the cgroup that
submitted it, as loop does: the host disk's bios are charged to the
submitter's blkcg (io.max holds), the page cache the I/O allocates to its
memcg (memory.current grows).  The table options' bad input is in
test_tables.py; the file-mode suite itself (test_file_mode.py) runs with
the default count in make check and with `DMLOOP_KO_ARGS=workers=1`.
"""

import contextlib
import mmap
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import dmloop
import filemode_util as fm
from safety_util import table_error_re

MiB = 1 << 20
PARAM = Path("/sys/module/dm_loop/parameters/workers")


def default_workers():
    return int(PARAM.read_text())


# ------------------------------------------------------------ the option

def test_workers_option_and_module_parameter():
    """`workers <n>` sets a file-mode device's count (info shows it, the
    table prints it back); without it the device takes the module
    parameter's value at creation; a block-mode device has none.  The
    parameter refuses 0, 65 and junk and keeps its value."""
    old = default_workers()
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        dmloop.write_random(img, 4 * MiB, seed=3, fsync=True)
        with fm.loop_device("wk-opt", img, 4 * MiB, opts=("force_file", "workers", "7")):
            assert fm.target_info("wk-opt")["workers"] == 7
            assert dmloop.table("wk-opt").split()[-4:] == ["3", "force_file", "workers", "7"]
        try:
            PARAM.write_text("2")
            with fm.loop_device("wk-def", img, 4 * MiB, opts=("force_file",)):
                assert fm.target_info("wk-def")["workers"] == 2
                PARAM.write_text("5")       # a device keeps the count it was made with
                assert fm.target_info("wk-def")["workers"] == 2
                assert "workers" not in dmloop.table("wk-def")
            for bad in ("0", "65", "4x", "-1"):
                with pytest.raises(OSError):
                    PARAM.write_text(bad)
                assert default_workers() == 5, bad
        finally:
            PARAM.write_text(str(old))
        with fm.loop_device("wk-blk", img, 4 * MiB, opts=("workers", "3")):
            assert fm.status_fields("wk-blk")["mode"] == "block"
            assert fm.target_info("wk-blk")["workers"] == 0
            assert dmloop.table("wk-blk").split()[-3:] == ["2", "workers", "3"]


# ------------------------------------------------------------ parallel, capped

DELAY_S = 0.05


def _parallel_reads(dev, threads, reads_each):
    """`threads` threads each read `reads_each` distinct 4 KiB blocks of `dev`
    with O_DIRECT, one at a time; returns (seconds, errors)."""
    errors = []

    def reader(t):
        buf = mmap.mmap(-1, 4096)
        fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
        try:
            for i in range(reads_each):
                if os.preadv(fd, [buf], (i * threads + t) * 4096) != 4096:
                    errors.append("short read")
        except OSError as e:
            errors.append(str(e))
        finally:
            os.close(fd)

    ts = [threading.Thread(target=reader, args=(t,)) for t in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.monotonic() - t0, errors


@pytest.mark.parametrize("workers", [1, 4, None], ids=["one", "four", "default"])
def test_workers_serve_a_deep_queue_in_parallel_and_no_more(workers):
    """Buffered file mode over ext4 on dm-delay (every read of the disk
    takes 50 ms; no readahead, a cold cache: each bio is one synchronous
    page-cache miss in its worker).  8 readers, 64 reads: with n workers
    they take at least 64/n x 50 ms (never more than n at once: the delay
    is a floor, whatever the machine) and less than twice that (all n at
    work), where one worker takes 3.2 s."""
    if dmloop.modprobe("dm-delay").returncode != 0:
        pytest.skip("no dm-delay in this kernel")
    disk = dmloop.scratch_disk(0)
    sectors = dmloop.device_size(disk) // 512
    n = workers or default_workers()
    # A 64 MiB filesystem made without delay; then reads delayed, writes
    # not, and no readahead (after the reload, which resets it, and before
    # the file is opened: the open file keeps the value it saw).
    sectors = min(sectors, 131072)
    dmloop.create("wk-delay", "0 %d delay %s 0 0" % (sectors, disk))
    try:
        with dmloop.mounted_fs("ext4", dev="/dev/mapper/wk-delay") as mp:
            img = mp / "img"
            dmloop.write_random(img, 4 * MiB, seed=5, fsync=True)
            dmloop.drop_caches()
            dmloop.suspend("wk-delay")
            dmloop.reload("wk-delay", "0 %d delay %s 0 %d %s 0 0"
                          % (sectors, disk, DELAY_S * 1000, disk))
            dmloop.resume("wk-delay")
            rdev = os.stat("/dev/mapper/wk-delay").st_rdev
            Path("/sys/dev/block/%d:%d/queue/read_ahead_kb"
                 % (os.major(rdev), os.minor(rdev))).write_text("0")
            opts = ("force_file", "no_direct_io") + (("workers", str(workers)) if workers else ())
            with fm.loop_device("wk-par", img, 4 * MiB, opts=opts) as dev:
                assert fm.target_info("wk-par")["workers"] == n
                took, errors = _parallel_reads(dev, 8, 8)
                assert not errors, errors
                floor = 64 // min(n, 8) * DELAY_S
                assert floor * 0.95 <= took < 2 * floor, (
                    "%d workers: 64 reads took %.2f s; %.2f s if %d at once" % (n, took, floor, n))
                assert fm.target_info("wk-par")["errors"] == 0
    finally:
        dmloop.remove("wk-delay")


# ------------------------------------------------------------ data

@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_fio_verify_with_32_jobs(io):
    """32 fio jobs at once, each writing and then crc32c-verifying its own
    2 MiB of the device, through the direct (aio) and the buffered path,
    find no error."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, 64 * MiB)
        opts = ("force_file",) + (("no_direct_io",) if io == "buffered" else ())
        with fm.loop_device("wk-fio", img, 64 * MiB, opts=opts) as dev:
            out = fm.fio(dev, "--ioengine=psync", "--direct=1", "--numjobs=32",
                         "--size=2M", "--offset_increment=2M", "--rw=randwrite",
                         "--bsrange=4k-32k", "--verify=crc32c", "--verify_fatal=1",
                         "--group_reporting", "--verify_state_save=0").stdout
            assert fm.fio_errors(out) == 0, out
            info = fm.target_info("wk-fio")
            assert info["errors"] == 0, info
            assert info["direct_ios" if io == "direct" else "buffered_ios"] > 0, info


def test_reload_and_remove_race_the_workers():
    """Buffered fio from 8 jobs while the table is reloaded, alternately
    with 2 and 8 workers, and resumed 10 times; then removed the moment fio
    is done: no error, no lost write (crc32c), a clean kernel log."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, 32 * MiB)
        base = fm.file_table(img, 32 * MiB)
        with fm.loop_device("wk-race", img, 32 * MiB,
                            opts=("force_file", "no_direct_io", "workers", "8")) as dev:
            job = fm.fio(dev, "--ioengine=psync", "--direct=1", "--numjobs=8", "--size=2M",
                         "--offset_increment=4M", "--rw=randwrite", "--bs=4k",
                         "--verify=crc32c", "--verify_fatal=1", "--rate=256k",
                         "--group_reporting", "--verify_state_save=0", background=True)
            try:
                time.sleep(1)
                for i in range(10):
                    if job.poll() is not None:
                        break
                    dmloop.suspend("wk-race", *(["--noflush"] if i % 2 else []))
                    dmloop.reload("wk-race", base + " 4 force_file no_direct_io workers %d"
                                  % (2 if i % 2 else 8))
                    dmloop.resume("wk-race")
                    time.sleep(0.2)
            finally:
                out, err = job.communicate(timeout=900)
            assert job.returncode == 0 and fm.fio_errors(out) == 0, out + err
            dmloop.remove("wk-race", retries=1)


# ------------------------------------------------------------ stacking

def test_stacked_file_mode_devices_never_wait_on_their_own_workqueue():
    """Nine file-mode devices, 64 workers each, over files on ext4 on a
    tenth file-mode device: each upper bio's buffered read of its file
    waits for the lower device's worker.  With one workqueue for all, the
    576 blocked upper workers fill its max_active (512) and the lower
    worker never runs: a hang.  Each stack depth has its own workqueue, so
    the 576 random reads at queue depth 64 finish."""
    n_upper, each = 9, 48 * MiB
    with dmloop.mounted_fs("ext4") as host:
        low = host / "lower"
        fm.make_sparse(low, n_upper * each + 128 * MiB)
        with fm.loop_device("wk-low", low, n_upper * each + 128 * MiB,
                            opts=("force_file",)) as ldev:
            with dmloop.mounted_fs("ext4", dev=ldev) as mp:
                files = []
                for i in range(n_upper):
                    f = mp / ("up%d" % i)
                    dmloop.write_random(f, each, seed=70 + i, fsync=True)
                    files.append(f)
                with contextlib.ExitStack() as stack:
                    devs = [stack.enter_context(fm.loop_device(
                        "wk-up%d" % i, f, each,
                        opts=("force_file", "no_direct_io", "workers", "64")))
                        for i, f in enumerate(files)]
                    dmloop.drop_caches()
                    jobs = [fm.fio(d, "--ioengine=libaio", "--direct=1", "--iodepth=64",
                                   "--rw=randread", "--bs=4k", "--runtime=8", "--time_based",
                                   "--norandommap", "--group_reporting", background=True)
                            for d in devs]
                    outs = []
                    for job in jobs:
                        try:
                            out, err = job.communicate(timeout=180)
                        except subprocess.TimeoutExpired:
                            pytest.fail("fio over the stacked devices hung (workqueue full?)")
                        assert job.returncode == 0 and fm.fio_errors(out) == 0, out + err
                        outs.append(out)
                    for i in range(n_upper):
                        info = fm.target_info("wk-up%d" % i)
                        assert info["errors"] == 0 and info["reads"] > 0, info
                    # the lower device's workers are on a workqueue of their own
                    assert fm.target_info("wk-low")["stack_depth"] == 0
                    assert fm.target_info("wk-up0")["stack_depth"] == 1


def test_a_reload_cannot_put_a_device_under_one_stacked_on_it():
    """L over a file on the host disk, U over a file on ext4 on L (depth 1),
    M another file-mode device with ext4 (depth 0).  Reloading L onto a
    file on M's ext4 would make L as deep as U, whose workers wait for L's:
    refused with ELOOP and a clear error, the live table untouched; a
    reload onto another file on the host disk is fine."""
    size = 32 * MiB
    with dmloop.mounted_fs("ext4") as host, contextlib.ExitStack() as stack:
        for n in ("low", "low2", "mid"):
            fm.make_sparse(host / n, size)
        ldev = stack.enter_context(fm.loop_device("wk-l", host / "low", size,
                                                  opts=("force_file",)))
        mdev = stack.enter_context(fm.loop_device("wk-m", host / "mid", size,
                                                  opts=("force_file",)))
        lmp = stack.enter_context(dmloop.mounted_fs("ext4", dev=ldev))
        mmp = stack.enter_context(dmloop.mounted_fs("ext4", dev=mdev))
        fm.make_sparse(lmp / "up", 4 * MiB)
        fm.make_sparse(mmp / "deep", size)
        stack.enter_context(fm.loop_device("wk-u", lmp / "up", 4 * MiB, opts=("force_file",)))
        assert [fm.target_info(n)["stack_depth"] for n in ("wk-l", "wk-m", "wk-u")] == [0, 0, 1]
        before = dmloop.table("wk-l")
        kmsg = dmloop.Kmsg()
        try:
            kmsg.mark()
            p = dmloop.dmsetup("reload", "wk-l", check=False,
                               input=fm.file_table(mmp / "deep", size, opts=("force_file",)) + "\n")
            lines = kmsg.new_lines()
        finally:
            kmsg.close()
        assert p.returncode != 0, "a reload under a stacked device was accepted"
        want = table_error_re("A device stacked on this one would be under it", "ELOOP")
        assert any(want.search(line) for line in lines), lines
        assert dmloop.table("wk-l") == before
        dmloop.reload("wk-l", fm.file_table(host / "low2", size, opts=("force_file",)))
        dmloop.dmsetup("clear", "wk-l")


# ------------------------------------------------------------ cgroups

def _cgroups(*names, controllers=("io", "memory")):
    fm.enable_controllers(*controllers)
    cgs = []
    for n in names:
        cg = fm.CGROOT / n
        cg.mkdir()
        cgs.append(cg)
    return cgs


def _rm_cgroups(cgs):
    for cg in cgs:
        fm.remove_cgroup(cg)


def _in_cgroup(cg, argv):
    return subprocess.Popen(["sh", "-c", 'echo $$ > "$0"/cgroup.procs && exec "$@"', str(cg)]
                            + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _io_stat(cg, majmin):
    for line in (cg / "io.stat").read_text().splitlines():
        f = line.split()
        if f and f[0] == majmin:
            return {k: int(v) for k, v in (x.split("=") for x in f[1:])}
    return {}


def test_io_max_of_each_submitter_holds_on_the_host_disk():
    """Two cgroups write 4 MiB each, at once, through one file-mode device
    (direct I/O), with io.max on the host disk only: 1 MiB/s for one, 8 MiB/s
    for the other.  Each is throttled to its own limit, and io.stat charges
    each cgroup's bytes on the host disk to that cgroup (before, the workers
    charged everything to the root cgroup: neither was throttled)."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        dmloop.write_random(img, 16 * MiB, seed=8, fsync=True)
        disk = dmloop.scratch_disk(0)
        rdev = os.stat(disk).st_rdev
        majmin = "%d:%d" % (os.major(rdev), os.minor(rdev))
        cgs = _cgroups("dmloop-slow", "dmloop-fast")
        try:
            slow, fast = cgs
            if not (slow / "io.max").exists():
                pytest.skip("no io.max: the kernel has no CONFIG_BLK_DEV_THROTTLING")
            (slow / "io.max").write_text("%s wbps=%d" % (majmin, 1 * MiB))
            (fast / "io.max").write_text("%s wbps=%d" % (majmin, 8 * MiB))
            with fm.loop_device("wk-cg", img, 16 * MiB, opts=("force_file",)) as dev:
                t0 = time.monotonic()
                jobs = {cg: _in_cgroup(cg, ["dd", "if=/dev/zero", "of=%s" % dev, "bs=64k",
                                            "count=64", "seek=%d" % (i * 128), "oflag=direct",
                                            "conv=notrunc"])
                        for i, cg in enumerate(cgs)}
                took = {}
                while len(took) < 2:
                    for cg, p in jobs.items():
                        if cg not in took and p.poll() is not None:
                            took[cg] = time.monotonic() - t0
                            assert p.returncode == 0, p.communicate()
                    time.sleep(0.05)
                assert fm.target_info("wk-cg")["direct_ios"] > 0
                for cg in cgs:
                    st = _io_stat(cg, majmin)
                    assert st.get("wbytes", 0) >= 4 * MiB, (cg, majmin, st)
                assert took[slow] >= 2.5, "1 MiB/s cgroup wrote 4 MiB in %.1f s" % took[slow]
                assert took[slow] > 2 * took[fast], took
        finally:
            _rm_cgroups(cgs)


def test_buffered_writes_are_charged_to_the_writers_memcg():
    """A process in its own cgroup writes 32 MiB through a buffered
    file-mode device (with O_DIRECT on the device, so that the only page
    cache is the backing file's, filled by the workers): the cgroup's
    memory.current grows by most of it (before, the workers charged it to
    the root cgroup)."""
    with dmloop.mounted_fs("ext4") as mp:
        img = mp / "img"
        fm.make_sparse(img, 48 * MiB)
        cgs = _cgroups("dmloop-mem")
        try:
            cg = cgs[0]
            with fm.loop_device("wk-mem", img, 48 * MiB,
                                opts=("force_file", "no_direct_io")) as dev:
                before = int((cg / "memory.current").read_text())
                p = _in_cgroup(cg, ["dd", "if=/dev/zero", "of=%s" % dev, "bs=1M", "count=32",
                                    "oflag=direct", "conv=notrunc"])
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
                grown = int((cg / "memory.current").read_text()) - before
                stat = dict(line.split() for line in (cg / "memory.stat").read_text().splitlines())
                assert fm.target_info("wk-mem")["buffered_ios"] > 0
                assert grown >= 24 * MiB, "memory.current grew %d KiB; memory.stat file %s" % (
                    grown >> 10, stat.get("file"))
                assert int(stat["file"]) >= 24 * MiB, stat
        finally:
            _rm_cgroups(cgs)
