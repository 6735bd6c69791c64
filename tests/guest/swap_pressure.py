#!/usr/bin/python3
"""Encrypted swap under memory pressure, on dm-loop or on /dev/loop.

The 2025 report from a handheld gaming PC vendor: swap on dm-crypt on a
loop device deadlocks when memory runs out.  The stack here is theirs:

    swap file on ext4 -> dm-loop (block mode) or /dev/loop -> dm-crypt
    (plain, random key) -> mkswap, swapon

and a child process allocates anonymous memory and writes every page
(its own index in it) until RAM and most of the swap are in use, then reads
every page back (a swap-in of all it pushed out) and checks it.

test_swap_pressure.py runs it on dm-loop and asserts; `make swap-compare`
runs it as a script in two small guests, one per backend, and prints what
happened (/dev/loop's result is reported, never asserted: a hung guest is
killed by the runner's timeout and says "timeout").

    swap_pressure.py --backend dmloop|loop --disk /dev/vda [--json]
"""

import argparse
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import time

MiB = 1 << 20
PAGE = mmap.PAGESIZE
CHUNK = 16 * MiB
SWAP_MIB = 768
MNT = "/mnt/swap-pressure"
SWAPFILE = MNT + "/swapfile"
CRYPT = "swp-crypt"
LOOPNAME = "swp-loop"


def sh(cmd, check=True, timeout=300):
    p = subprocess.run(cmd, shell=isinstance(cmd, str), text=True, capture_output=True,
                       timeout=timeout)
    if check and p.returncode:
        raise RuntimeError("%s: exit %d: %s" % (cmd, p.returncode, p.stderr.strip()))
    return p.stdout


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def hog(target, deadline, report_fd):
    """The child: map and write `target` bytes, 16 MiB at a time, each page
    holding its own number; then read every page back.  Writes one JSON line
    to report_fd."""
    os.nice(5)
    chunks = []
    t0 = time.monotonic()
    n = 0
    page_no = 0
    while n < target:
        if time.monotonic() > deadline:
            break
        m = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, CHUNK, PAGE):
            m[off:off + 8] = struct.pack("<Q", page_no ^ 0x5A5A5A5A5A5A5A5A)
            page_no += 1
        chunks.append(m)
        n += CHUNK
    t_write = time.monotonic() - t0
    bad = 0
    page_no = 0
    for m in chunks:
        for off in range(0, CHUNK, PAGE):
            if struct.unpack("<Q", m[off:off + 8])[0] != page_no ^ 0x5A5A5A5A5A5A5A5A:
                bad += 1
            page_no += 1
    res = {"allocated": n, "write_s": round(t_write, 1),
           "total_s": round(time.monotonic() - t0, 1), "bad_pages": bad,
           "timed_out": n < target}
    os.write(report_fd, (json.dumps(res) + "\n").encode())


def kmsg_lines():
    return sh(["dmesg"], check=False).splitlines()


def build_stack(backend, disk, ko):
    sh(["modprobe", "-q", "dm-crypt"], check=False)
    if backend == "dmloop" and ko and not os.path.exists("/sys/module/dm_loop"):
        sh(["insmod", ko])
    os.makedirs(MNT, exist_ok=True)
    sh(["mkfs.ext4", "-q", "-F", disk])
    sh(["mount", disk, MNT])
    # Every block written: block mode (and what mkswap would want of a
    # swap file).
    sh(["dd", "if=/dev/zero", "of=" + SWAPFILE, "bs=1M", "count=%d" % SWAP_MIB,
        "conv=fsync", "status=none"])
    if backend == "dmloop":
        sectors = SWAP_MIB * MiB // 512
        sh(["dmsetup", "create", LOOPNAME, "--table",
            "0 %d loop %s 0" % (sectors, SWAPFILE)])
        status = sh(["dmsetup", "status", LOOPNAME]).split()
        if status[3] != "block":
            raise RuntimeError("the dm-loop device came up %s (%s), not block" % (
                status[3], status[9]))
        lower = "/dev/mapper/" + LOOPNAME
    else:
        sh(["modprobe", "-q", "loop"], check=False)
        lower = sh(["losetup", "--find", "--show", SWAPFILE]).strip()
    sh(["cryptsetup", "open", "--type", "plain", "--batch-mode", "--cipher",
        "aes-xts-plain64", "--key-size", "256", "--key-file", "/dev/urandom",
        lower, CRYPT])
    sh(["mkswap", "/dev/mapper/" + CRYPT])
    sh(["swapon", "/dev/mapper/" + CRYPT])
    return lower


def teardown(backend, lower):
    sh(["swapoff", "/dev/mapper/" + CRYPT], check=False, timeout=600)
    sh(["cryptsetup", "close", CRYPT], check=False)
    if backend == "dmloop":
        sh(["dmsetup", "remove", LOOPNAME], check=False)
    elif lower:
        sh(["losetup", "-d", lower], check=False)
    sh(["umount", MNT], check=False)


def run(backend, disk, ko=None, budget=300):
    """Build the stack, run the hog within `budget` seconds, tear down.
    Returns a dict: what the hog did, the swap used at the peak, and the OOM
    kills and hung tasks the kernel logged meanwhile."""
    lower = build_stack(backend, disk, ko)
    before = len(kmsg_lines())
    mi = meminfo()
    target = mi["MemAvailable"] + mi["SwapFree"] * 3 // 4
    target -= target % CHUNK
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            hog(target, time.monotonic() + budget, wfd)
        finally:
            os._exit(0)
    os.close(wfd)
    peak_swap = 0
    status = None
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        if time.monotonic() - t0 > budget + 120:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        m = meminfo()
        peak_swap = max(peak_swap, m["SwapTotal"] - m["SwapFree"])
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    raw = os.read(rfd, 4096).decode()
    os.close(rfd)
    new = kmsg_lines()[before:]
    res = {
        "backend": backend,
        "mem_total": mi["MemTotal"], "swap_total": mi["SwapTotal"], "target": target,
        "elapsed_s": round(elapsed, 1), "peak_swap": peak_swap,
        "exit": None if status is None else os.waitstatus_to_exitcode(status),
        "oom_kills": [l for l in new if re.search(r"Out of memory|oom-kill|Killed process", l)],
        "hung_tasks": [l for l in new if "blocked for more than" in l],
        "hog": json.loads(raw) if raw.strip() else None,
    }
    teardown(backend, lower)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["dmloop", "loop"], required=True)
    ap.add_argument("--disk", default="/dev/vda")
    ap.add_argument("--ko", default=os.environ.get("DMLOOP_KO"))
    ap.add_argument("--budget", type=int, default=300)
    a = ap.parse_args()
    print("swap-pressure: %s: stack built, hog starting" % a.backend, flush=True)
    res = run(a.backend, a.disk, a.ko, a.budget)
    print("swap-pressure-result: " + json.dumps(res), flush=True)
    ok = res["hog"] and not res["hog"]["timed_out"] and not res["hog"]["bad_pages"] \
        and not res["oom_kills"] and res["exit"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
