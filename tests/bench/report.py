#!/usr/bin/python3
"""Turn build/bench/raw.json (from bench.py in the VM) into the tables:
bench.md, bench.csv and bench-*.png beside it.  Figures are medians of the
repetitions, with min and max; each row carries its ratio to dm-linear and
to /dev/loop (buffered) measured in the same boot."""
import csv
import json
import os
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "build/bench"
raw = json.load(open(os.path.join(out, "raw.json")))


def med(runs, key):
    v = [r[key] for r in runs]
    return statistics.median(v), min(v), max(v)


rows = []
by = {(e["stack"], e["workload"], e["qd"]): e["runs"] for e in raw["fio"]}
for (stack, wl, qd), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    m, lo, hi = med(runs, "mib_s")
    iops = med(runs, "iops")[0]
    cpu = med(runs, "cpu_us_per_io")[0]
    lin = by.get(("linear", wl, qd))
    loop = by.get(("loop-buf", wl, qd))
    rows.append({"workload": wl, "qd": qd, "stack": stack, "MiB/s": round(m, 1),
                 "min": round(lo, 1), "max": round(hi, 1), "IOPS": round(iops),
                 "cpu_us/io": round(cpu, 1),
                 "x linear": round(m / med(lin, "mib_s")[0], 2) if lin else "",
                 "x loop": round(m / med(loop, "mib_s")[0], 2) if loop else ""})

brd_rows = []
brd = raw.get("brd") or {}
loopb = statistics.median(r["mib_s"] for r in brd["loop-buf"]) if "loop-buf" in brd else None
for stack, runs in brd.items():
    m, lo, hi = med(runs, "mib_s")
    brd_rows.append({"stack": stack, "MiB/s": round(m, 1), "min": round(lo, 1), "max": round(hi, 1),
                     "x loop": round(m / loopb, 2) if loopb else ""})


def md_table(rows):
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    s = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for r in rows:
        s += "| " + " | ".join(str(r[k]) for k in keys) + " |\n"
    return s


text = "# dm-loop benchmark (%s mode), kernel %s, %d repetitions, QEMU TCG\n\n" % (
    "quick" if raw["quick"] else "full", raw["kernel"], raw["reps"])
text += "## fio over the same file on ext4 (median MiB/s, min, max)\n\n" + md_table(rows)
text += "\n## brd benchmark (ext4 on brd, 512 MiB file, psync 4k, 16 jobs, randrw)\n\n" + md_table(brd_rows)
text += "\n## Setup cost\n\n" + md_table(raw.get("setup", []))
text += "\n## Scale (one process)\n\n" + md_table(raw.get("scale", []))
sc = {r["kind"]: r for r in raw.get("scale", [])}
if "loop" in sc and "linear" in sc:
    text += "\ndm-loop extra memory per device over dm-linear: %.2f KiB\n" % (
        sc["loop"]["mem_kb_per_dev"] - sc["linear"]["mem_kb_per_dev"])
open(os.path.join(out, "bench.md"), "w").write(text)
with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["none"])
    w.writeheader()
    w.writerows(rows)
print(text)

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("bench: python3-matplotlib not installed, no plots")
    sys.exit(0)
for wl in sorted({r["workload"] for r in rows}):
    for qd in sorted({r["qd"] for r in rows if r["workload"] == wl}):
        sel = [r for r in rows if r["workload"] == wl and r["qd"] == qd]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([r["stack"] for r in sel], [r["MiB/s"] for r in sel],
               yerr=[[r["MiB/s"] - r["min"] for r in sel], [r["max"] - r["MiB/s"] for r in sel]])
        ax.set_ylabel("MiB/s (median, min-max)")
        ax.set_title("%s qd%d, kernel %s" % (wl, qd, raw["kernel"]))
        plt.xticks(rotation=20)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench-%s-qd%d.png" % (wl, qd)))
        plt.close(fig)
