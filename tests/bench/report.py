#!/usr/bin/python3
"""Turn raw.json (from tests/bench/bench.py in the VM) into the tables:
bench.md, bench.csv, bench-setup.csv, bench-scale.csv and bench-*.png
beside it, and print the Markdown.

    report.py [--junit FILE [--vm-exit N]] DIR

Figures are medians of the repetitions, with min and max.  A ratio is the
median over repetitions of the ratio measured within one repetition (the two
stacks ran minutes apart at most, in the same boot), with its range.
A stack that failed is listed as FAILED, never as a zero row.

--junit FILE also writes a JUnit report for `make check` (debug/summary):
one case per stack of each fio group (fio, brd, io_uring), per setup and
scale phase, and one
for the VM run (--vm-exit: debug/vm's exit status, 90 a kernel fault, 91 a
timeout).  A case fails only when the benchmark broke (an error, a missing
row or repetition); the targets' verdicts are in its output, never a
failure: under TCG a ratio's noise is larger than the targets' margins."""
import argparse
import csv
import json
import os
import statistics
import sys
import xml.etree.ElementTree as ET

FS_STACKS = ["linear", "dmloop-block", "dmloop-dio", "dmloop-buf", "loop-buf", "loop-dio", "file"]
BRD_STACKS = ["dmloop-block", "dmloop-dio", "loop-buf", "loop-dio", "file"]
# File mode with `workers 1` (the one worker of the first release), beside
# the default, in runs whose plan says "w1".
W1_STACKS = ["dmloop-dio-w1", "dmloop-buf-w1"]
ORDER = ["linear", "dmloop-block", "dmloop-dio", "dmloop-dio-w1", "dmloop-buf", "dmloop-buf-w1",
         "loop-buf", "loop-dio", "file", "full-block", "sparse-block", "sparse-file"]
URING_STACKS = ["linear", "dmloop-block"]
# Block mode over a sparse XFS file (bench.py's sparse phase), next to
# block mode over a fully written file and file mode over the same sparse
# file.
SPARSE_STACKS = ["full-block", "sparse-block", "sparse-file"]
SPARSE_REFS = ("full-block", "sparse-file")
URING_ENGINE = "io_uring"
SCALE_KINDS = ["linear", "loop", "losetup"]
VM_EXITS = {90: "kernel fault in the guest log", 91: "guest timed out",
            92: "guest failed to boot or died"}

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
    order = {s: i for i, s in enumerate(ORDER)}
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


def uring_rows(entries):
    """The io_uring group's rows (dm-linear and block mode), named
    "WORKLOAD qdN io_uring", with block mode's ratio to dm-linear; and
    [(workload, qd, per-repetition ratios, ratio)] for the text under the
    table."""
    rows, by = fio_rows(entries, ("linear",))
    for r in rows:
        r["workload"] = "%s qd%d %s" % (r["workload"], r.pop("qd"), URING_ENGINE)
    per_rep = []
    for (st, wl, qd), runs in sorted(by.items()):
        ref = by.get(("linear", wl, qd))
        if st == "dmloop-block" and ref:
            per_rep.append((wl, qd, [a["mib_s"] / b["mib_s"] for a, b in zip(runs, ref)
                                     if b["mib_s"] > 0], ratio(runs, ref)))
    return rows, per_rep


def all_keys(rows):
    """Every key of rows, first seen first (rows from older runs lack newer keys)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def md_table(rows, keys=None):
    if not rows:
        return "(none)\n"
    keys = keys or all_keys(rows)
    s = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for r in rows:
        s += "| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n"
    return s


def failed_rows(raw, prefix):
    return ["- %s" % e for e in raw.get("errors", []) if e.startswith(prefix)]


# The setup table's columns, in order (a raw.json from before a column
# existed shows it empty; "walk" shows "-").  Ratios: create_x_linear is
# dm-loop's create over dm-linear's on the same extents, setup_x_smallest
# a contiguous file's kernel setup over the smallest contiguous file's,
# setup_x_filefrag_v the kernel setup over `filefrag -v` on the file.
SETUP_KEYS = ["file", "layout", "walk", "extents", "filefrag_extents", "table_bytes",
              "bytes_per_extent", "dmloop_create_s", "linear_create_s", "create_x_linear",
              "kernel_setup_ms", "setup_x_smallest", "filefrag_v_s", "setup_x_filefrag_v",
              "dmloop_remove_s", "filefrag_s", "losetup_s"]
SETUP_LIMITS = {"size": 1.5, "linear": 1.5, "filefrag_v": 2.0}


def mib(row):
    """A setup row's file size in MiB ("1024 MiB")."""
    return int(row["file"].split()[0])


def size_name(n):
    return "%d GiB" % (n // 1024) if n >= 1024 and n % 1024 == 0 else "%d MiB" % n


def setup_fig(row, key):
    """The median of a setup figure, from its repetitions when the row has
    them (the columns are rounded), else the column; None when absent."""
    v = (row.get("reps") or {}).get(key)
    if v:
        return statistics.median(v)
    return row.get(key)


def setup_ratios(setup):
    """{row index: {ratio column: value}} (ratios of medians)."""
    out = {i: {} for i in range(len(setup))}
    cont = [(mib(r), i) for i, r in enumerate(setup) if r.get("layout") == "contiguous"]
    small = setup[min(cont)[1]] if cont else None
    for i, r in enumerate(setup):
        dl, ln = setup_fig(r, "dmloop_create_s"), setup_fig(r, "linear_create_s")
        ks, fv = setup_fig(r, "kernel_setup_ms"), setup_fig(r, "filefrag_v_s")
        if dl is not None and ln:
            out[i]["create_x_linear"] = dl / ln
        if r.get("layout") == "contiguous" and ks is not None and \
                setup_fig(small, "kernel_setup_ms"):
            out[i]["setup_x_smallest"] = ks / setup_fig(small, "kernel_setup_ms")
        if ks is not None and fv:
            out[i]["setup_x_filefrag_v"] = ks / (fv * 1000)
    return out


def setup_rows(setup):
    """The setup table: SETUP_KEYS (then any other column of the raw rows
    but their repetitions), with the ratios."""
    ratios = setup_ratios(setup)
    keys = SETUP_KEYS + [k for r in setup for k in r
                         if k not in SETUP_KEYS and k not in ("reps", "linear_segments")]
    keys = list(dict.fromkeys(keys))
    rows = []
    for i, r in enumerate(setup):
        row = {k: r.get(k, "") for k in keys}
        row["walk"] = r.get("walk") or "-"
        for k, v in ratios[i].items():
            row[k] = "%.2f" % v
        rows.append(row)
    return rows, keys


def setup_targets(raw):
    """The setup targets (issue 19): [(target, verdict, measured)].  In
    quick mode the rows are the quick mode's sizes, and the target says so."""
    setup = raw.get("setup") or []
    quick = raw.get("mode") == "quick" or raw.get("quick")
    tag = "; quick mode's sizes" if quick else ""
    ratios = setup_ratios(setup)
    out = []

    def verdict(ok):
        return "met" if ok else "NOT met"

    def desc(r):
        return "%s %s" % (size_name(mib(r)), r["layout"])

    def rng(r, key, scale=1.0):
        v = (r.get("reps") or {}).get(key)
        return " (%s-%s)" % ("%.1f" % (min(v) * scale), "%.1f" % (max(v) * scale)) if v else ""

    cont = sorted((mib(r), i) for i, r in enumerate(setup)
                  if r.get("layout") == "contiguous" and setup_fig(r, "kernel_setup_ms"))
    if len(cont) >= 2:
        lo, hi = setup[cont[0][1]], setup[cont[-1][1]]
        x = ratios[cont[-1][1]]["setup_x_smallest"]
        lim = SETUP_LIMITS["size"]
        out.append(("setup %s <= %gx %s (kernel%s)" % (
            size_name(mib(hi)), lim, size_name(mib(lo)), tag), verdict(x <= lim),
            "%.2fx: %s %.2f ms%s, %s %.2f ms%s (walk %s); all contiguous: %s" % (
                x, size_name(mib(hi)), setup_fig(hi, "kernel_setup_ms"),
                rng(hi, "kernel_setup_ms"), size_name(mib(lo)), setup_fig(lo, "kernel_setup_ms"),
                rng(lo, "kernel_setup_ms"), hi.get("walk") or "-", ", ".join(
                    "%s %.2f ms" % (size_name(m), setup_fig(setup[i], "kernel_setup_ms"))
                    for m, i in cont))))
    lin = [(ratios[i]["create_x_linear"], i) for i in range(len(setup))
           if "create_x_linear" in ratios[i]]
    if lin:
        x, i = max(lin, key=lambda t: t[0])         # the first of equals
        lim = SETUP_LIMITS["linear"]
        r = setup[i]
        out.append(("dmsetup create <= %gx dm-linear%s" % (lim, " (%s)" % tag[2:] if tag else ""),
                    verdict(x <= lim),
                    "highest %.2fx (%s: %.1f ms, dm-linear %.1f ms); all: %s" % (
                        x, desc(r), setup_fig(r, "dmloop_create_s") * 1000,
                        setup_fig(r, "linear_create_s") * 1000,
                        ", ".join("%s %.2fx" % (desc(setup[j]), y) for y, j in
                                  sorted(lin, key=lambda t: t[1])))))
    frag = [i for i, r in enumerate(setup) if r.get("layout") != "contiguous" and
            "setup_x_filefrag_v" in ratios[i]]
    if frag:
        n = sorted({setup[i]["extents"] for i in frag})
        lim = SETUP_LIMITS["filefrag_v"]
        x, i = max(((ratios[i]["setup_x_filefrag_v"], i) for i in frag), key=lambda t: t[0])
        r = setup[i]
        out.append(("%s extents: kernel setup <= %gx filefrag -v%s" % (
            "{:,}".format(n[0]) if len(n) == 1 else "{:,}-{:,}".format(n[0], n[-1]), lim,
            " (%s)" % tag[2:] if tag else ""), verdict(x <= lim),
            "highest %.2fx (%s: kernel setup %.2f ms%s, filefrag -v %.2f ms%s); all: %s" % (
                x, desc(r), setup_fig(r, "kernel_setup_ms"), rng(r, "kernel_setup_ms"),
                setup_fig(r, "filefrag_v_s") * 1000, rng(r, "filefrag_v_s", 1000),
                ", ".join("%s %.2fx" % (desc(setup[j]), ratios[j]["setup_x_filefrag_v"])
                          for j in frag))))
    return out


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

    def ratios_target(name, r, limit):
        """One target over [(workload, qd, ratio)]: met when every ratio is."""
        r = [x for x in r if x[2]]
        if r:
            worst = min(r, key=lambda x: x[2][0])
            out.append((name, all_verdict([x[2] for x in r], limit),
                        "lowest median ratio %.2f (%s qd%d, per-rep range %s); all: %s" % (
                            worst[2][0], worst[0], worst[1], fmt_range(worst[2]),
                            ", ".join("%s qd%d %.2f" % (w, q, x[0]) for w, q, x in r))))

    def brd_target(name, stack, ref, limit):
        b = ratio(brd.get((stack, "randrw-4k", 1)), brd.get((ref, "randrw-4k", 1)))
        if b:
            out.append((name, ratio_verdict(b, limit),
                        "%.2fx (per-rep range %s)" % (b[0], fmt_range(b))))

    def fs_ratios(stack, ref, qd_only=None):
        return [(wl, qd, ratio(fs.get((stack, wl, qd)), fs.get((ref, wl, qd))))
                for (st, wl, qd) in fs if st == ref and qd_only in (None, qd)]

    ratios_target("block mode >= 0.95x dm-linear", fs_ratios("dmloop-block", "linear"), 0.95)
    brd_target("block mode >= 6x loop buffered (brd benchmark)", "dmloop-block", "loop-buf", 6)
    ratios_target("file mode (direct I/O) >= 1.0x loop --direct-io=on",
                  fs_ratios("dmloop-dio", "loop-dio"), 1.0)
    brd_target("file mode (direct I/O) >= 2x loop --direct-io=on (brd benchmark)",
               "dmloop-dio", "loop-dio", 2)
    ratios_target("buffered file mode >= 1.2x loop buffered at queue depth 32",
                  fs_ratios("dmloop-buf", "loop-buf", qd_only=32), 1.2)
    # "Within the noise": no repetition slower than 0.95x.
    ratios_target("file mode, default workers: no workload below 0.95x `workers 1`",
                  [("%s %s" % (tag, wl), qd,
                    ratio(src.get((st, wl, qd)), src.get((st + "-w1", wl, qd))))
                   for tag, src in (("fio", fs), ("brd", brd))
                   for (st, wl, qd) in src if st in ("dmloop-dio", "dmloop-buf")], 0.95)
    sp = {(e["stack"], e["workload"], e["qd"]): e["runs"] for e in raw.get("sparse", [])}

    def sparse_ratios(ref, workloads):
        return [(wl, qd, ratio(sp.get(("sparse-block", wl, qd)), sp.get((ref, wl, qd))))
                for (st, wl, qd) in sp if st == ref and wl in workloads]
    rand = ("randread-4k", "randwrite-4k")
    ratios_target("sparse XFS file, after the first pass: 4 KiB qd32 >= 0.95x block mode "
                  "over a fully written file", sparse_ratios("full-block", rand), 0.95)
    ratios_target("sparse XFS file, after the first pass: 4 KiB qd32 >= 1.5x file mode "
                  "on the same sparse file", sparse_ratios("sparse-file", rand), 1.5)
    ratios_target("sparse XFS file: the first pass (1 MiB writes) >= 1.0x file mode "
                  "with direct I/O", sparse_ratios("sparse-file", ("fill-1M",)), 1.0)
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
        worst = max(ext, key=lambda s: (s["bytes_per_extent"], s["extents"]))
        out.append(("extent table <= 24 B per extent", verdict(worst["bytes_per_extent"] <= 24),
                    "%.1f B per extent (%d extents, %d bytes)" % (
                        worst["bytes_per_extent"], worst["extents"], worst["table_bytes"])))
    return out + setup_targets(raw)


def report(out, plot=True):
    raw = json.load(open(os.path.join(out, "raw.json")))
    refs = ("linear", "loop-buf", "loop-dio")
    rows, fs = fio_rows(raw.get("fio", []), refs)
    brd_rows, brd = fio_rows(raw.get("brd", []), ("loop-buf", "loop-dio"))
    for r in brd_rows:
        r.pop("workload")
        r.pop("qd")
    ur_rows, ur_ratios = uring_rows(raw.get("uring", []))

    mib = raw.get("file_size", 0) >> 20
    text = ("# dm-loop benchmark (%s mode)\n\nkernel %s, %d CPUs, %d MiB, QEMU TCG; "
            "%d repetitions, stacks rotated between them; fio jobs of %s s.\n" % (
                raw.get("mode", "quick" if raw.get("quick") else "full"), raw["kernel"],
                raw.get("cpus", 0), raw.get("mem_kb", 0) >> 10, raw["reps"],
                raw.get("runtime_s", "?")))
    if raw.get("module"):
        text += "Module %s (SHA-1 %s).\n" % (raw["module"].get("path"),
                                             raw["module"].get("sha1"))
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
    if ur_rows or (raw.get("plan") or {}).get("uring"):
        text += ("\n## io_uring over the same %d MiB file (fio ioengine=io_uring, O_DIRECT): "
                 "block mode next to dm-linear\n\n"
                 "MiB/s median (min, max); x linear: median of the per-repetition ratios. "
                 "io_uring hands each read to an io-wq worker when the device does not take "
                 "REQ_NOWAIT bios.\n\n" % mib + md_table(ur_rows))
        for wl, qd, v, r in ur_ratios:
            text += ("\nblock/linear, %s qd%d %s: %.2f (per repetition %s).\n" % (
                wl, qd, URING_ENGINE, r[0], ", ".join("%.2f" % x for x in v)))
    sp_rows, _ = fio_rows(raw.get("sparse", []), SPARSE_REFS)
    if sp_rows or (raw.get("plan") or {}).get("sparse"):
        text += ("\n## Block mode over a sparse %d MiB file on XFS (libaio, O_DIRECT)\n\n"
                 "Each repetition: a new file, a first pass of 1 MiB writes over all of it "
                 "(fill-1M), then 4 KiB random reads and writes.  full-block: block mode over "
                 "a fully written file; sparse-block: block mode over the sparse file; "
                 "sparse-file: file mode (direct I/O) over the same sparse file.  "
                 "cpu_us/io: the whole fio run's.\n\n" % mib + md_table(sp_rows))
    text += "\n## Setup cost (block mode, require_block; losetup is LOOP_CONFIGURE)\n\n"
    st_rows, st_keys = setup_rows(raw.get("setup", []))
    text += md_table(st_rows, st_keys)
    text += "\n## Scale (tests/bench/scale: N devices from one program)\n\n"
    text += md_table(raw.get("scale", []))
    tg = targets(raw, fs, brd)
    if tg:
        text += "\n## Targets\n\n" + md_table(
            [{"target": t, "verdict": v, "measured": m} for t, v, m in tg])
    if raw.get("phases_s"):
        text += "\nTime in the guest: %s s (%s).\n" % (
            raw.get("guest_total_s"), ", ".join("%s %s s" % kv for kv in raw["phases_s"].items()))
    fp = raw.get("profile", {}).get("fio")
    if fp:
        text += ("fio phase: %s s = fio start %s s + %d jobs' runtime %s s + %d stack switches "
                 "%s s + per-job start/stop and switch jobs %s s.\n" % (
                     fp["wall_s"], fp["start_s"], fp["jobs"], fp["runtime_s"], fp["switches"],
                     fp["switch_s"], fp["other_s"]))

    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(text)
    fields = ["bench", "workload", "qd", "stack", "MiB/s", "min", "max", "IOPS", "cpu_us/io",
              "x linear", "x loop-buf", "x loop-dio", "x full-block", "x sparse-file"]
    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, bench="file"))
        for r in brd_rows:
            w.writerow(dict(r, bench="brd", workload="randrw-4k", qd=1))
        for e, r in zip(sorted_entries(raw.get("uring", [])), ur_rows):
            w.writerow(dict(r, bench=URING_ENGINE, workload=e["workload"], qd=e["qd"]))
        for r in sp_rows:
            w.writerow(dict(r, bench="sparse"))
    for name in ("setup", "scale"):
        data = raw.get(name) or []
        keys = all_keys(data) if data else ["none"]
        if name == "setup" and data:
            data, keys = st_rows, st_keys
        with open(os.path.join(out, "bench-%s.csv" % name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(data)
    print(text)
    if plot:
        plots(out, raw, rows, brd_rows, ur_rows)
    return 1 if raw.get("errors") or not raw.get("complete", True) else 0


def scale_split(row):
    """dm-loop's scale row must have half its devices in each mode (the
    module's own counts, from a run that reports them)."""
    if row["kind"] != "loop" or row.get("file_devices") is None:
        return ""
    want = (row["count"] - row["count"] // 2, row["count"] // 2)
    got = (row.get("block_devices"), row["file_devices"])
    return "" if got == want else "block/file mode devices %s/%s, not %d/%d" % (got + want)


def junit_cases(raw, vm_exit):
    """[(name, failure text or None, output)]: what make check counts."""
    cases = []
    if vm_exit:
        cases.append(("vm", "debug/vm exit %d: %s" % (vm_exit, VM_EXITS.get(vm_exit, "the "
                      "benchmark failed in the guest")), ""))
    else:
        cases.append(("vm", None, ""))
    if raw is None:
        cases.append(("results", "no raw.json: the benchmark produced no results", ""))
        return cases
    errors = raw.get("errors", [])
    plan = raw.get("plan") or {   # a raw.json from before "plan": what it holds
        "workloads": sorted({"%s qd%d" % (e["workload"], e["qd"]) for e in raw.get("fio", [])}),
        "brd": bool(raw.get("brd")), "setup": len(raw.get("setup", [])),
        "scale_n": 1000 if raw.get("mode") == "quick" else 20000}
    reps = raw.get("reps", 0)
    used = set()

    def errs(*prefixes):
        e = [x for x in errors if x.startswith(prefixes)]
        used.update(e)
        return "; ".join(e)

    def group(tag, gi, stacks, entries, wanted):
        by = {}
        for e in entries:
            by.setdefault(e["stack"], {})["%s qd%d" % (e["workload"], e["qd"])] = e["runs"]
        for st in stacks:
            err = errs("g%d-%s:" % (gi, st))
            have = by.get(st, {})
            miss = [w for w in wanted if w not in have]
            short = ["%s (%d of %d)" % (w, len(have[w]), reps) for w in wanted
                     if w in have and len(have[w]) < reps]
            zero = [w for w in wanted if w in have and not all(r["mib_s"] > 0 for r in have[w])]
            why = "; ".join(x for x in (err, miss and "no rows for " + ", ".join(miss),
                                        short and "missing repetitions: " + ", ".join(short),
                                        zero and "zero throughput: " + ", ".join(zero)) if x)
            cases.append(("%s[%s]" % (tag, st), why or None, ""))

    w1 = W1_STACKS if plan.get("w1") else []
    if plan.get("workloads"):
        group("fio", 0, FS_STACKS + w1, raw.get("fio", []), plan["workloads"])
    if plan.get("brd"):
        group("brd", 1 if plan.get("workloads") else 0, BRD_STACKS + w1[:1], raw.get("brd", []),
              ["randrw-4k qd1"])
    if plan.get("uring"):           # bench.py's last group
        group("uring", bool(plan.get("workloads")) + bool(plan.get("brd")), URING_STACKS,
              raw.get("uring", []), plan["uring"])
    if plan.get("sparse"):
        by = {}
        for e in raw.get("sparse", []):
            by.setdefault(e["stack"], {})["%s qd%d" % (e["workload"], e["qd"])] = e["runs"]
        for st in SPARSE_STACKS:
            have = by.get(st, {})
            miss = [w for w in plan["sparse"] if w not in have]
            short = ["%s (%d of %d)" % (w, len(have[w]), reps) for w in plan["sparse"]
                     if w in have and len(have[w]) < reps]
            why = "; ".join(x for x in (errs("sparse-%s:" % st),
                                        miss and "no rows for " + ", ".join(miss),
                                        short and "missing repetitions: " + ", ".join(short))
                            if x)
            cases.append(("sparse[%s]" % st, why or None, ""))
    if plan.get("setup"):
        n = len(raw.get("setup", []))
        err = errs("setup")
        cases.append(("setup", "; ".join(x for x in (err, n < plan["setup"] and "%d of %d rows"
                                                     % (n, plan["setup"])) if x) or None, ""))
    if plan.get("scale_n"):
        have = {s["kind"]: s for s in raw.get("scale", [])}
        for kind in SCALE_KINDS:
            err = errs("scale %s" % kind)
            why = err or ("no row" if kind not in have else
                          "count %d, not %d" % (have[kind]["count"], plan["scale_n"])
                          if have[kind]["count"] != plan["scale_n"] else
                          scale_split(have[kind]))
            cases.append(("scale[%s]" % kind, why or None, ""))
    rest = [e for e in errors if e not in used]
    cases.append(("run complete", "; ".join(
        ([] if raw.get("complete") else ["incomplete run (phases done: %s)" % ", ".join(
            raw.get("phases_s", {}))]) + rest) or None, ""))
    return cases


def write_junit(path, cases, output=""):
    suite = ET.Element("testsuite", name="bench-quick", tests=str(len(cases)),
                       failures=str(sum(1 for c in cases if c[1])), errors="0", skipped="0")
    for name, fail, _ in cases:
        tc = ET.SubElement(suite, "testcase", classname="bench", name=name)
        if fail:
            ET.SubElement(tc, "failure", message=fail).text = fail
    ET.SubElement(suite, "system-out").text = output
    ET.ElementTree(suite).write(path, encoding="unicode", xml_declaration=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="build/bench")
    ap.add_argument("--junit", help="also write a JUnit report here")
    ap.add_argument("--vm-exit", type=int, default=0, help="debug/vm's exit status")
    ap.add_argument("--no-plots", action="store_true", help="no PNG (tests)")
    a = ap.parse_args()
    raw = None
    if os.path.exists(os.path.join(a.out, "raw.json")):
        rc = report(a.out, plot=not a.no_plots)
        raw = json.load(open(os.path.join(a.out, "raw.json")))
    else:
        print("bench: no results (%s missing)" % os.path.join(a.out, "raw.json"))
        rc = 1
    if a.junit:
        cases = junit_cases(raw, a.vm_exit)
        md = os.path.join(a.out, "bench.md")
        write_junit(a.junit, cases, open(md).read() if raw is not None and os.path.exists(md)
                    else "")
        failed = [c for c in cases if c[1]]
        print("bench: %d of %d cases passed%s" % (len(cases) - len(failed), len(cases), "".join(
            "\nbench: FAILED %s: %s" % (c[0], c[1]) for c in failed)))
        if failed:
            rc = 1
    return rc


def sorted_entries(entries):
    """entries in fio_rows' order (its rows, one per entry)."""
    order = {s: i for i, s in enumerate(ORDER)}
    return sorted(entries, key=lambda e: (e["workload"], e["qd"], order.get(e["stack"], 99),
                                          e["stack"]))


def plots(out, raw, rows, brd_rows, ur_rows=()):
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
    for wl in sorted({r["workload"] for r in ur_rows}):
        groups.append((wl.replace(" ", "-"), [r for r in ur_rows if r["workload"] == wl]))
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
    sys.exit(main())
