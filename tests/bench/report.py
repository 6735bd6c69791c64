#!/usr/bin/python3
"""Turn raw.json (from tests/bench/bench.py in the VM) into the tables:
bench.md, bench.csv, bench-setup.csv, bench-scale.csv and bench-*.png
beside it, and print the Markdown.

    report.py DIR

Figures are medians of the repetitions, with min and max.  A ratio is the
median over repetitions of the ratio measured within one repetition (the two
stacks ran minutes apart at most, in the same boot), with its range.
A stack that failed is listed as FAILED, never as a zero row."""
import csv
import json
import os
import statistics
import sys

KEYS = ("mib_s", "iops", "cpu_us_per_io")


def med(runs, key):
    v = [r[key] for r in runs]
    return statistics.median(v), min(v), max(v)


def ratio(runs, ref):
    """Median, min and max of the per-repetition ratios runs/ref (MiB/s)."""
    if not runs or not ref:
        return None
    v = [a["mib_s"] / b["mib_s"] for a, b in zip(runs, ref) if b["mib_s"] > 0]
    return (statistics.median(v), min(v), max(v)) if v else None


def fmt_ratio(r):
    return "" if r is None else "%.2f" % r[0]


def fmt_range(r):
    return "" if r is None else "%.2f-%.2f" % (r[1], r[2])


def fio_rows(entries, refs):
    """One row per (workload, qd, stack) with ratios to each ref stack."""
    by = {(e["stack"], e["workload"], e["qd"]): e["runs"] for e in entries}
    order = {s: i for i, s in enumerate(["linear", "dmloop-block", "dmloop-dio", "dmloop-buf",
                                         "loop-buf", "loop-dio", "file"])}
    rows = []
    for (stack, wl, qd), runs in sorted(by.items(), key=lambda kv: (
            kv[0][1], kv[0][2], order.get(kv[0][0], 99), kv[0][0])):
        m, lo, hi = med(runs, "mib_s")
        row = {"workload": wl, "qd": qd, "stack": stack, "MiB/s": round(m, 1),
               "min": round(lo, 1), "max": round(hi, 1),
               "IOPS": round(med(runs, "iops")[0]),
               "cpu_us/io": round(med(runs, "cpu_us_per_io")[0], 1)}
        for ref in refs:
            row["x " + ref] = fmt_ratio(ratio(runs, by.get((ref, wl, qd))))
        rows.append(row)
    return rows, by


def md_table(rows, keys=None):
    if not rows:
        return "(none)\n"
    keys = keys or list(rows[0])
    s = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for r in rows:
        s += "| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n"
    return s


def failed_rows(raw, prefix):
    return ["- %s" % e for e in raw.get("errors", []) if e.startswith(prefix)]


def targets(raw, fs, brd):
    """The issue's targets, each with the figure that decides it."""
    out = []

    def verdict(ok):
        return "met" if ok else "NOT met"

    def ratio_verdict(r, limit):
        """Met or not only when every repetition agrees; TCG noise often
        spreads a ratio across the limit."""
        if r[1] >= limit:
            return "met"
        if r[2] < limit:
            return "NOT met"
        return "undecided (noise)"

    def all_verdict(rs, limit):
        v = {ratio_verdict(x, limit) for x in rs}
        if "NOT met" in v:
            return "NOT met"
        return "met" if v == {"met"} else "undecided (noise)"

    r = [(wl, qd, ratio(fs.get(("dmloop-block", wl, qd)), fs.get(("linear", wl, qd))))
         for (st, wl, qd) in fs if st == "linear"]
    r = [x for x in r if x[2]]
    if r:
        worst = min(r, key=lambda x: x[2][0])
        out.append(("block mode >= 0.95x dm-linear",
                    all_verdict([x[2] for x in r], 0.95),
                    "lowest median ratio %.2f (%s qd%d, per-rep range %s); all: %s" % (
                        worst[2][0], worst[0], worst[1], fmt_range(worst[2]),
                        ", ".join("%s qd%d %.2f" % (w, q, x[0]) for w, q, x in r))))
    b = ratio(brd.get(("dmloop-block", "randrw-4k", 1)), brd.get(("loop-buf", "randrw-4k", 1)))
    if b:
        out.append(("block mode >= 6x loop buffered (brd benchmark)", ratio_verdict(b, 6),
                    "%.2fx (per-rep range %s)" % (b[0], fmt_range(b))))
    r = [(wl, qd, ratio(fs.get(("dmloop-dio", wl, qd)), fs.get(("loop-dio", wl, qd))))
         for (st, wl, qd) in fs if st == "loop-dio"]
    r = [x for x in r if x[2]]
    if r:
        worst = min(r, key=lambda x: x[2][0])
        out.append(("file mode (direct I/O) >= 1.0x loop --direct-io=on",
                    all_verdict([x[2] for x in r], 1.0),
                    "lowest median ratio %.2f (%s qd%d, per-rep range %s); all: %s" % (
                        worst[2][0], worst[0], worst[1], fmt_range(worst[2]),
                        ", ".join("%s qd%d %.2f" % (w, q, x[0]) for w, q, x in r))))
    sc = {s["kind"]: s for s in raw.get("scale", [])}
    if "loop" in sc and "linear" in sc:
        d_avail = sc["loop"]["mem_kb_per_dev"] - sc["linear"]["mem_kb_per_dev"]
        d_slab = sc["loop"]["slab_kb_per_dev"] - sc["linear"]["slab_kb_per_dev"]
        out.append(("extra memory per device <= 8 KiB over dm-linear",
                    verdict(max(d_avail, d_slab) <= 8),
                    "%.2f KiB by MemAvailable, %.2f KiB by Slab (N=%d)" % (
                        d_avail, d_slab, sc["loop"]["count"])))
    ext = [s for s in raw.get("setup", []) if s["extents"] > 1]
    if ext:
        worst = max(ext, key=lambda s: s["bytes_per_extent"])
        out.append(("extent table <= 24 B per extent", verdict(worst["bytes_per_extent"] <= 24),
                    "%.1f B per extent (%d extents, %d bytes)" % (
                        worst["bytes_per_extent"], worst["extents"], worst["table_bytes"])))
    return out


def report(out):
    raw = json.load(open(os.path.join(out, "raw.json")))
    refs = ("linear", "loop-buf", "loop-dio")
    rows, fs = fio_rows(raw.get("fio", []), refs)
    brd_rows, brd = fio_rows(raw.get("brd", []), ("loop-buf", "loop-dio"))
    for r in brd_rows:
        r.pop("workload")
        r.pop("qd")

    mib = raw.get("file_size", 0) >> 20
    text = ("# dm-loop benchmark (%s mode)\n\nkernel %s, %d CPUs, %d MiB, QEMU TCG; "
            "%d repetitions, stacks rotated between them; fio jobs of %s s.\n" % (
                raw.get("mode", "quick" if raw.get("quick") else "full"), raw["kernel"],
                raw.get("cpus", 0), raw.get("mem_kb", 0) >> 10, raw["reps"],
                raw.get("runtime_s", "?")))
    if not raw.get("complete", True):
        text += "\n**Incomplete run: only these phases finished: %s.**\n" % (
            ", ".join(raw.get("phases_s", {})) or "none")
    if raw.get("errors"):
        text += "\n**%d error(s); the failed stacks have no rows:**\n\n%s\n" % (
            len(raw["errors"]), "\n".join("- " + e for e in raw["errors"]))
    text += ("\n## fio over one %d MiB file on ext4 on a virtio disk\n\n"
             "MiB/s median (min, max); x STACK: median of the per-repetition ratios.\n\n"
             % mib + md_table(rows))
    text += ("\n## brd benchmark (ext4 on brd, 512 MiB file, fio psync 4 KiB, 16 jobs, "
             "randrw 50/50, O_DIRECT, %s s)\n\n" % raw.get("brd_runtime_s", "?") +
             md_table(brd_rows))
    text += "\n## Setup cost (block mode, require_block; losetup is LOOP_CONFIGURE)\n\n"
    text += md_table(raw.get("setup", []))
    text += "\n## Scale (tests/bench/scale: N devices from one program)\n\n"
    text += md_table(raw.get("scale", []))
    tg = targets(raw, fs, brd)
    if tg:
        text += "\n## Targets\n\n" + md_table(
            [{"target": t, "verdict": v, "measured": m} for t, v, m in tg])
    if raw.get("phases_s"):
        text += "\nTime in the guest: %s s (%s).\n" % (
            raw.get("guest_total_s"), ", ".join("%s %s s" % kv for kv in raw["phases_s"].items()))

    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(text)
    fields = ["bench", "workload", "qd", "stack", "MiB/s", "min", "max", "IOPS", "cpu_us/io",
              "x linear", "x loop-buf", "x loop-dio"]
    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, bench="file"))
        for r in brd_rows:
            w.writerow(dict(r, bench="brd", workload="randrw-4k", qd=1))
    for name in ("setup", "scale"):
        data = raw.get(name) or []
        with open(os.path.join(out, "bench-%s.csv" % name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]) if data else ["none"])
            w.writeheader()
            w.writerows(data)
    print(text)
    plots(out, raw, rows, brd_rows)
    return 1 if raw.get("errors") or not raw.get("complete", True) else 0


def plots(out, raw, rows, brd_rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: python3-matplotlib not installed, no plots")
        return
    groups = [("%s-qd%d" % (wl, qd), [r for r in rows if r["workload"] == wl and r["qd"] == qd])
              for wl, qd in sorted({(r["workload"], r["qd"]) for r in rows})]
    if brd_rows:
        groups.append(("brd-randrw-4k", brd_rows))
    for name, sel in groups:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar([r["stack"] for r in sel], [r["MiB/s"] for r in sel],
               yerr=[[r["MiB/s"] - r["min"] for r in sel], [r["max"] - r["MiB/s"] for r in sel]])
        ax.set_ylabel("MiB/s (median, min-max)")
        ax.set_title("%s, kernel %s (QEMU TCG)" % (name, raw["kernel"]))
        plt.xticks(rotation=20)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bench-%s.png" % name))
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(report(sys.argv[1] if len(sys.argv) > 1 else "build/bench"))
