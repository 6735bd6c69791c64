#!/usr/bin/python3
"""dm-loop benchmark, run inside the VM by `make bench` (debug/bench).

Every stack is measured over the same backing storage in the same boot, one
stack at a time, the order of stacks rotated between repetitions; each
figure is the median of the repetitions (min and max kept).  Absolute
numbers under QEMU TCG mean little: the ratios between stacks are the result.

Stacks over one fully written file on ext4 on a scratch disk:
  linear        dm-linear over the file's blocks, from FIEMAP (fs unmounted)
  dmloop-block  dm-loop, block mode
  dmloop-dio    dm-loop, file mode, direct I/O (force_file)
  dmloop-buf    dm-loop, file mode, buffered (force_file no_direct_io)
  loop-buf      /dev/loop, buffered
  loop-dio      /dev/loop, --direct-io=on
  file          fio on the file itself, O_DIRECT
Then the 2025 dm-devel benchmark (brd ramdisk, ext4, 512 MiB file, fio psync,
4 KiB, 16 jobs, mixed read/write), setup cost, and scale.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KO = os.environ.get("DMLOOP_KO", os.path.join(REPO, "module", "dm-loop.ko"))
MNT = "/mnt/bench"
MiB = 1 << 20


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    if check and p.returncode:
        raise RuntimeError("%s failed (%d): %s" % (cmd, p.returncode, p.stderr.strip()))
    return p


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle


def fio(dev, rw, bs, depth, runtime, size, jobs=1, engine="libaio", direct=1, extra=()):
    before = cpu_busy_jiffies()
    cmd = ["fio", "--name=b", "--filename=%s" % dev, "--rw=%s" % rw, "--bs=%s" % bs,
           "--iodepth=%d" % depth, "--ioengine=%s" % engine, "--direct=%d" % direct,
           "--runtime=%s" % runtime, "--time_based", "--size=%d" % size,
           "--numjobs=%d" % jobs, "--group_reporting", "--output-format=json",
           "--randseed=42"] + list(extra)
    p = sh(cmd)
    busy = cpu_busy_jiffies() - before
    j = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    bw = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / MiB
    iops = j["read"]["iops"] + j["write"]["iops"]
    hz = os.sysconf("SC_CLK_TCK")
    return {"mib_s": bw, "iops": iops, "cpu_us_per_io": busy / hz * 1e6 / max(ios, 1)}


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


class Stack:
    def __init__(self, name, up, down, dev):
        self.name, self.up, self.down, self.dev = name, up, down, dev


def dm_create(name, table):
    sh(["dmsetup", "create", name], input=table + "\n")
    return "/dev/mapper/" + name


def dm_remove(name):
    for _ in range(20):
        if sh(["dmsetup", "remove", name], check=False).returncode == 0:
            return
        time.sleep(0.2)
    sh(["dmsetup", "remove", name])


def make_stacks(disk, img, size):
    sectors = size // 512
    loopdev = {}

    def loop_up(dio):
        def up():
            loopdev["d"] = sh(["losetup", "-f", "--show", "--direct-io=%s" % ("on" if dio else "off"),
                               img]).stdout.strip()
            return loopdev["d"]
        return up

    def loop_down():
        sh(["losetup", "-d", loopdev["d"]])

    def linear_up():
        ext = file_extents(img)
        sh(["umount", MNT])
        lines = []
        for logical, physical, length in ext:
            if logical >= size:
                break
            length = min(length, size - logical)
            lines.append("%d %d linear %s %d" % (logical // 512, length // 512, disk, physical // 512))
        return dm_create("b-linear", "\n".join(lines))

    def linear_down():
        dm_remove("b-linear")
        sh(["mount", disk, MNT])

    def dmloop(name, opts):
        return (lambda: dm_create(name, "0 %d loop %s 0%s" % (sectors, img, opts)),
                lambda: dm_remove(name))

    stacks = [Stack("linear", linear_up, linear_down, None)]
    for name, opts in (("dmloop-block", " 1 require_block"), ("dmloop-dio", " 1 force_file"),
                       ("dmloop-buf", " 2 force_file no_direct_io")):
        up, down = dmloop("b-" + name, opts)
        stacks.append(Stack(name, up, down, None))
    stacks.append(Stack("loop-buf", loop_up(False), loop_down, None))
    stacks.append(Stack("loop-dio", loop_up(True), loop_down, None))
    stacks.append(Stack("file", lambda: img, lambda: None, None))
    return stacks


WORKLOADS_FULL = [("seqread-1M", "read", "1M"), ("seqwrite-1M", "write", "1M"),
                  ("randread-4k", "randread", "4k"), ("randwrite-4k", "randwrite", "4k")]


def measure(stacks, workloads, depths, reps, runtime, size):
    results = {}
    for rep in range(reps):
        order = stacks[rep % len(stacks):] + stacks[:rep % len(stacks)]
        for st in order:
            dev = st.up()
            try:
                for wname, rw, bs in workloads:
                    for qd in depths:
                        r = fio(dev, rw, bs, qd, runtime, size)
                        results.setdefault((st.name, wname, qd), []).append(r)
                        log("rep %d %-13s %-13s qd%-2d %8.1f MiB/s %9.0f IOPS" %
                            (rep, st.name, wname, qd, r["mib_s"], r["iops"]))
            finally:
                st.down()
    return results


def brd_benchmark(reps, runtime):
    """The 2025 dm-devel figure: brd, ext4, 512 MiB file, psync 4k x 16 jobs randrw."""
    size = 512 * MiB
    sh("modprobe brd rd_nr=1 rd_size=%d" % (640 * 1024), check=False)
    if not os.path.exists("/dev/ram0"):
        return {}
    sh(["mkfs.ext4", "-q", "-F", "/dev/ram0"])
    os.makedirs("/mnt/brd", exist_ok=True)
    sh(["mount", "/dev/ram0", "/mnt/brd"])
    img = "/mnt/brd/img"
    sh(["dd", "if=/dev/zero", "of=%s" % img, "bs=1M", "count=512", "conv=fsync", "status=none"])
    sectors = size // 512
    loopdev = {}

    def loop_up(dio):
        def up():
            loopdev["d"] = sh(["losetup", "-f", "--show", "--direct-io=%s" % ("on" if dio else "off"),
                               img]).stdout.strip()
            return loopdev["d"]
        return up

    stacks = [
        Stack("dmloop-block", lambda: dm_create("brd-dmloop", "0 %d loop %s 0" % (sectors, img)),
              lambda: dm_remove("brd-dmloop"), None),
        Stack("loop-buf", loop_up(False), lambda: sh(["losetup", "-d", loopdev["d"]]), None),
        Stack("loop-dio", loop_up(True), lambda: sh(["losetup", "-d", loopdev["d"]]), None),
        Stack("file", lambda: img, lambda: None, None),
    ]
    res = {}
    for rep in range(reps):
        order = stacks[rep % len(stacks):] + stacks[:rep % len(stacks)]
        for st in order:
            dev = st.up()
            try:
                r = fio(dev, "randrw", "4k", 1, runtime, size, jobs=16, engine="psync", direct=0)
                res.setdefault(st.name, []).append(r)
                log("brd rep %d %-13s %8.1f MiB/s" % (rep, st.name, r["mib_s"]))
            finally:
                st.down()
    sh(["umount", "/mnt/brd"])
    sh("rmmod brd", check=False)
    return res


def setup_cost(disk, sizes_gib):
    """Device creation time over contiguous files, next to filefrag and losetup."""
    rows = []
    for gib in sizes_gib:
        img = os.path.join(MNT, "setup-%dg" % gib)
        sh(["fallocate", "-l", "%dG" % gib, img])
        # Written, not just allocated: block mode maps written blocks only.
        sh(["dd", "if=/dev/zero", "of=%s" % img, "bs=4M", "count=%d" % (gib * 256),
            "conv=notrunc,fsync", "oflag=direct", "status=none"])
        sectors = gib << 21
        t0 = time.monotonic()
        dm_create("b-setup", "0 %d loop %s 0 1 require_block" % (sectors, img))
        t_dm = time.monotonic() - t0
        info = dict(l.split(": ", 1) for l in
                    sh(["dmsetup", "message", "b-setup", "0", "info"]).stdout.splitlines() if ": " in l)
        dm_remove("b-setup")
        t0 = time.monotonic()
        sh(["filefrag", img])
        t_ff = time.monotonic() - t0
        t0 = time.monotonic()
        d = sh(["losetup", "-f", "--show", img]).stdout.strip()
        t_lo = time.monotonic() - t0
        sh(["losetup", "-d", d])
        rows.append({"file_gib": gib, "dmloop_create_s": round(t_dm, 3),
                     "kernel_setup_ms": round(int(info.get("setup_ns", 0)) / 1e6, 1),
                     "extents": int(info.get("extents", 0)),
                     "table_bytes": int(info.get("table_bytes", 0)),
                     "filefrag_s": round(t_ff, 3), "losetup_s": round(t_lo, 3)})
        os.unlink(img)
        log("setup %s" % rows[-1])
    return rows


def scale(n, disk2):
    """N devices of each kind from one process (tests/bench/scale)."""
    exe = os.path.join(REPO, "build", "bench", "scale")
    rows = []
    d = "/mnt/scale"
    os.makedirs(d, exist_ok=True)
    sh(["mkfs.ext4", "-q", "-F", "-N", str(2 * n + 1024), disk2])
    sh(["mount", disk2, d])
    try:
        for kind in ("linear", "loop", "losetup"):
            sub = os.path.join(d, kind)
            os.makedirs(sub, exist_ok=True)
            target = disk2 if kind == "linear" else sub
            if kind == "linear":
                sh(["umount", d])
            p = sh([exe, kind, str(n), target], check=False)
            if kind == "linear":
                sh(["mount", disk2, d])
            if p.returncode:
                log("scale %s failed: %s" % (kind, p.stderr.strip()))
                continue
            rows.append(json.loads(p.stdout))
            log("scale %s" % rows[-1])
    finally:
        sh(["umount", d], check=False)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "build", "bench"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    quick = a.quick

    sh(["insmod", KO], check=False)
    sh("modprobe loop; modprobe ext4; modprobe dm-mod", check=False)
    disk, disk2 = "/dev/vda", "/dev/vdb"
    size = (256 if quick else 512) * MiB
    os.makedirs(MNT, exist_ok=True)
    sh(["mkfs.ext4", "-q", "-F", disk])
    sh(["mount", disk, MNT])
    img = os.path.join(MNT, "img")
    sh(["dd", "if=/dev/urandom", "of=%s" % img, "bs=1M", "count=%d" % (size // MiB),
        "conv=fsync", "status=none"])

    reps = 3
    runtime = "2" if quick else "8"
    workloads = WORKLOADS_FULL if not quick else [WORKLOADS_FULL[0], WORKLOADS_FULL[2],
                                                 WORKLOADS_FULL[3]]
    depths = (1, 32) if not quick else (32,)
    results = measure(make_stacks(disk, img, size), workloads, depths, reps, runtime, size)
    brd = brd_benchmark(reps, "3" if quick else "10")
    sh(["rm", "-f", img])
    setup = setup_cost(disk, (1,) if quick else (1, 4))
    sh(["umount", MNT])
    sc = scale(1000 if quick else 20000, disk2)

    out = {"kernel": os.uname().release, "quick": quick, "reps": reps,
           "fio": [{"stack": s, "workload": w, "qd": q,
                    "runs": v} for (s, w, q), v in results.items()],
           "brd": brd, "setup": setup, "scale": sc}
    with open(os.path.join(a.out, "raw.json"), "w") as f:
        json.dump(out, f, indent=1)
    log("bench: raw results in %s" % os.path.join(a.out, "raw.json"))


if __name__ == "__main__":
    main()
