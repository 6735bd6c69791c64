# SPDX-License-Identifier: GPL-2.0
"""make bench's host half, without a VM: report.py over results recorded
from a real bench-quick run (fixtures/bench/raw-quick.json, plus made-up rows for the io_uring group
it predates), and bench.py's fio driver failing a stack loudly instead of
leaving a zero row."""
import csv
import json
import re
import shutil
import statistics
import subprocess
import sys

import pytest

from conftest import REPO

RAW = REPO / "fixtures" / "bench" / "raw-quick.json"
REPORT = REPO / "tests" / "bench" / "report.py"
FS_STACKS = {"linear", "dmloop-block", "dmloop-dio", "dmloop-buf", "loop-buf", "loop-dio", "file"}
BRD_STACKS = {"dmloop-block", "dmloop-dio", "loop-buf", "loop-dio", "file"}


def run_report(tmp_path, raw):
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    p = subprocess.run(["/usr/bin/python3", str(REPORT), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    return p


@pytest.fixture(scope="module")
def raw():
    return json.loads(RAW.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory, raw):
    out = tmp_path_factory.mktemp("bench")
    p = run_report(out, raw)
    assert p.returncode == 0, p.stderr
    return p, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fixture_is_a_complete_quick_run(raw):
    assert raw["mode"] == "quick" and raw["reps"] >= 3 and not raw["errors"]
    assert {e["stack"] for e in raw["fio"]} == FS_STACKS
    assert {e["stack"] for e in raw["brd"]} == BRD_STACKS
    assert all(len(e["runs"]) == raw["reps"] for e in raw["fio"] + raw["brd"])
    assert {s["kind"] for s in raw["scale"]} == {"linear", "loop", "losetup"}
    assert raw["setup"]


def test_markdown_has_every_table(report, raw):
    p, out = report
    md = (out / "bench.md").read_text()
    assert md in p.stdout
    for heading in ("## fio over one", "## brd benchmark", "## Setup cost", "## Scale",
                    "## Targets"):
        assert heading in md
    assert raw["kernel"] in md
    for stack in FS_STACKS:
        assert "| %s |" % stack in md


def test_csv_rows_are_medians_of_the_runs(report, raw):
    _, out = report
    rows = read_csv(out / "bench.csv")
    fs = [r for r in rows if r["bench"] == "file"]
    brd = [r for r in rows if r["bench"] == "brd"]
    assert len(fs) == len(raw["fio"]) and len(brd) == len(raw["brd"])
    for e in raw["fio"]:
        r = [r for r in fs if (r["stack"], r["workload"], int(r["qd"])) ==
             (e["stack"], e["workload"], e["qd"])]
        assert len(r) == 1
        v = [x["mib_s"] for x in e["runs"]]
        assert float(r[0]["MiB/s"]) == pytest.approx(statistics.median(v), abs=0.06)
        assert float(r[0]["min"]) == pytest.approx(min(v), abs=0.06)
        assert float(r[0]["max"]) == pytest.approx(max(v), abs=0.06)
        assert float(r[0]["MiB/s"]) > 0


def test_ratios_are_per_repetition(report, raw):
    _, out = report
    rows = read_csv(out / "bench.csv")
    by = {(e["stack"], e["workload"], e["qd"]): e["runs"] for e in raw["fio"]}
    for r in rows:
        if r["bench"] != "file":
            continue
        if r["stack"] == "linear":
            assert r["x linear"] == "1.00"
        ref = by[("loop-buf", r["workload"], int(r["qd"]))]
        mine = by[(r["stack"], r["workload"], int(r["qd"]))]
        want = statistics.median(a["mib_s"] / b["mib_s"] for a, b in zip(mine, ref))
        assert float(r["x loop-buf"]) == pytest.approx(want, abs=0.006)


def test_setup_and_scale_csv(report, raw):
    _, out = report
    setup = read_csv(out / "bench-setup.csv")
    scale = read_csv(out / "bench-scale.csv")
    assert len(setup) == len(raw["setup"]) and len(scale) == len(raw["scale"])
    assert {r["kind"] for r in scale} == {"linear", "loop", "losetup"}
    assert all(int(r["count"]) == raw["scale"][0]["count"] for r in scale)


def test_targets_name_their_figures(report):
    _, out = report
    md = (out / "bench.md").read_text()
    targets = md.split("## Targets", 1)[1]
    for t in ("0.95x dm-linear", "6x loop buffered", "1.0x loop --direct-io=on",
              "8 KiB over dm-linear", "24 B per extent"):
        line = [l for l in targets.splitlines() if t in l]
        assert len(line) == 1, t
        assert re.search(r"\| (met|NOT met|undecided \(noise\)) \|", line[0]), line[0]


def test_plots_written(report):
    _, out = report
    try:
        import matplotlib  # noqa: F401 (only whether it is there)
    except ImportError:
        pytest.skip("python3-matplotlib is not installed")
    assert len(list(out.glob("bench-*.png"))) >= 4


def test_failed_stack_has_no_row_and_fails(tmp_path, raw):
    raw = json.loads(json.dumps(raw))
    raw["fio"] = [e for e in raw["fio"] if e["stack"] != "dmloop-dio"]
    raw["errors"] = ["g0-dmloop-dio: up: [Errno 22] Invalid argument"]
    p = run_report(tmp_path, raw)
    assert p.returncode == 1
    md = (tmp_path / "bench.md").read_text()
    assert "g0-dmloop-dio: up:" in md and "| dmloop-dio |" not in md.split("## brd")[0]
    assert not [r for r in read_csv(tmp_path / "bench.csv")
                if r["bench"] == "file" and r["stack"] == "dmloop-dio"]


@pytest.mark.skipif(not shutil.which("fio"), reason="fio is not installed")
def test_bench_fails_a_stack_that_errors(tmp_path, monkeypatch):
    """bench.py's one-fio-process driver on the host, over plain files: a
    stack that cannot come up is reported in ERRORS and has no results,
    the others are measured every repetition."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    import bench
    monkeypatch.setattr(bench, "CTL", str(tmp_path / "ctl"))
    monkeypatch.setattr(bench, "drop_caches", lambda: None)
    monkeypatch.setattr(bench, "ERRORS", [])
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"\0" * (1 << 20))

    def broken():
        raise OSError(22, "Invalid argument")
    stacks = [bench.file_stack(str(tmp_path / "a")),
              bench.Stack("other", lambda: str(tmp_path / "b"), lambda: None),
              bench.Stack("broken", broken, lambda: None)]
    res = bench.run_fio([(stacks, [("randread-4k", "randread", "4k", 1)], 3,
                          {"ioengine": "psync", "direct": 0, "runtime": 1, "size": 1 << 20})],
                        str(tmp_path / "b"))
    assert [e for e in bench.ERRORS if "g0-broken" in e and "Invalid argument" in e]
    assert len(bench.ERRORS) == 1, bench.ERRORS
    assert set(res) == {(0, "file", "randread-4k", 1), (0, "other", "randread-4k", 1)}
    for runs in res.values():
        assert len(runs) == 3
        assert all(r["mib_s"] > 0 and r["iops"] > 0 and r["cpu_us_per_io"] >= 0 for r in runs)


def junit(tmp_path, raw, vm_exit=0):
    """report.py --junit over raw (None: no raw.json); (exit, {case: failure or None})."""
    import xml.etree.ElementTree as ET
    if raw is not None:
        (tmp_path / "raw.json").write_text(json.dumps(raw))
    xml = tmp_path / "bench.xml"
    p = subprocess.run(["/usr/bin/python3", str(REPORT), "--no-plots", "--junit", str(xml),
                        "--vm-exit", str(vm_exit), str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    root = ET.parse(xml).getroot()
    cases = {}
    for tc in root.iter("testcase"):
        f = tc.find("failure")
        cases[tc.get("name")] = None if f is None else f.get("message")
    assert int(root.get("tests")) == len(cases)
    assert int(root.get("failures")) == sum(1 for v in cases.values() if v)
    return p.returncode, cases


def test_junit_passes_a_complete_run(tmp_path, raw):
    rc, cases = junit(tmp_path, raw)
    assert rc == 0, cases
    assert not [c for c, f in cases.items() if f]
    for st in FS_STACKS:
        assert "fio[%s]" % st in cases
    for st in BRD_STACKS:
        assert "brd[%s]" % st in cases
    for kind in ("linear", "loop", "losetup"):
        assert "scale[%s]" % kind in cases
    assert {"vm", "setup", "run complete"} <= set(cases)


def test_junit_ignores_a_noisy_ratio(tmp_path, raw):
    """make check must not fail because a ratio missed its target."""
    raw = json.loads(json.dumps(raw))
    for e in raw["fio"] + raw["brd"]:
        if e["stack"] in ("dmloop-block", "dmloop-dio"):
            for r in e["runs"]:
                r["mib_s"] /= 100.0
    rc, cases = junit(tmp_path, raw)
    assert rc == 0 and not [c for c, f in cases.items() if f]
    assert "NOT met" in (tmp_path / "bench.md").read_text()


def test_junit_fails_a_broken_stack(tmp_path, raw):
    raw = json.loads(json.dumps(raw))
    raw["fio"] = [e for e in raw["fio"] if e["stack"] != "dmloop-dio"]
    raw["errors"] = ["g0-dmloop-dio: up: [Errno 22] Invalid argument"]
    rc, cases = junit(tmp_path, raw)
    assert rc == 1
    assert "Invalid argument" in cases["fio[dmloop-dio]"]
    assert [c for c, f in cases.items() if f] == ["fio[dmloop-dio]"]


def test_junit_fails_a_missing_repetition_or_scale_row(tmp_path, raw):
    raw = json.loads(json.dumps(raw))
    raw["fio"][0]["runs"] = raw["fio"][0]["runs"][:1]
    raw["scale"] = [s for s in raw["scale"] if s["kind"] != "losetup"]
    rc, cases = junit(tmp_path, raw)
    assert rc == 1
    assert "missing repetitions" in cases["fio[%s]" % raw["fio"][0]["stack"]]
    assert cases["scale[losetup]"] == "no row"


def test_junit_fails_a_scale_run_without_half_in_file_mode(tmp_path, raw):
    """The scale phase puts every odd dm-loop device in file mode; a run where
    the module counted otherwise did not measure what it says."""
    raw = json.loads(json.dumps(raw))
    loop = next(s for s in raw["scale"] if s["kind"] == "loop")
    n = loop["count"]
    loop.update(block_devices=n - n // 2, file_devices=n // 2)
    rc, cases = junit(tmp_path, raw)
    assert rc == 0 and cases["scale[loop]"] is None
    loop.update(block_devices=n, file_devices=0)
    rc, cases = junit(tmp_path, raw)
    assert rc == 1
    assert cases["scale[loop]"] == "block/file mode devices %d/0, not %d/%d" % (
        n, n - n // 2, n // 2)


def test_junit_without_results_or_with_a_kernel_fault(tmp_path, raw):
    (tmp_path / "none").mkdir()
    rc, cases = junit(tmp_path / "none", None, vm_exit=91)
    assert rc == 1 and "timed out" in cases["vm"] and "no raw.json" in cases["results"]
    rc, cases = junit(tmp_path, raw, vm_exit=90)
    assert rc == 1 and "kernel fault" in cases["vm"]
    assert [c for c, f in cases.items() if f] == ["vm"]


@pytest.mark.skipif(not shutil.which("fio"), reason="fio is not installed")
def test_bench_switches_once_per_stack_and_repetition(tmp_path, monkeypatch):
    """Each stack comes up once per repetition, also for a job of several
    clones (numjobs: the brd benchmark), whose clones would each run an
    exec_prerun."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    import bench
    monkeypatch.setattr(bench, "CTL", str(tmp_path / "ctl"))
    monkeypatch.setattr(bench, "ERRORS", [])
    ups = []
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"\0" * (1 << 20))

    def stack(name):
        def up():
            ups.append(name)
            return str(tmp_path / name)
        return bench.Stack(name, up, lambda: None, str(tmp_path / name))
    wl = [("randread-4k", "randread", "4k", 1), ("randwrite-4k", "randwrite", "4k", 1)]
    res = bench.run_fio([([stack("a"), stack("b")], wl, 2,
                          {"ioengine": "psync", "direct": 0, "runtime": 1, "size": 1 << 20}),
                         ([stack("a"), stack("b")], wl[:1], 2,
                          {"ioengine": "psync", "direct": 0, "runtime": 1, "size": 1 << 20,
                           "numjobs": 2})],
                        str(tmp_path / "b"))
    assert not bench.ERRORS
    assert sorted(ups) == ["a"] * 4 + ["b"] * 4
    assert len(res) == 6 and all(len(runs) == 2 for runs in res.values())


def with_uring(raw, block=(44.0, 50.0, 52.0), linear=(50.0, 55.0, 60.0)):
    """raw plus the io_uring group's rows (dm-linear and block mode, 4 KiB
    random read at queue depth 32), as bench.py writes them; the recorded
    run predates the group."""
    raw = json.loads(json.dumps(raw))

    def runs(v):
        return [{"mib_s": x, "iops": x * 256, "cpu_us_per_io": 30.0 + x / 10} for x in v]
    raw["plan"]["uring"] = ["randread-4k qd32"]
    raw["uring"] = [{"stack": "dmloop-block", "workload": "randread-4k", "qd": 32,
                     "runs": runs(block)},
                    {"stack": "linear", "workload": "randread-4k", "qd": 32,
                     "runs": runs(linear)}]
    raw["module"] = {"path": "module/dm-loop.ko", "sha1": "0123456789ab"}
    return raw


def test_uring_row_has_the_block_over_linear_ratio(tmp_path, raw):
    raw = with_uring(raw)
    p = run_report(tmp_path, raw)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "bench.md").read_text()
    sec = md.split("## io_uring", 1)[1].split("\n## ", 1)[0]
    assert "ioengine=io_uring" in sec
    block = [l for l in sec.splitlines()
             if l.startswith("| randread-4k qd32 io_uring | dmloop-block |")]
    linear = [l for l in sec.splitlines() if l.startswith("| randread-4k qd32 io_uring | linear |")]
    assert len(block) == 1 and len(linear) == 1, sec
    want = statistics.median([44 / 50, 50 / 55, 52 / 60])
    assert block[0].rstrip(" |").endswith("| %.2f" % want)
    assert linear[0].rstrip(" |").endswith("| 1.00")
    assert "block/linear, randread-4k qd32 io_uring: %.2f (per repetition 0.88, 0.91, 0.87)" \
        % want in sec
    assert "0123456789ab" in md
    # the libaio table and its targets are untouched by the new group
    base = tmp_path / "base"
    base.mkdir()
    assert run_report(base, json.loads(RAW.read_text())).returncode == 0
    old = (base / "bench.md").read_text()
    assert md.split("## io_uring")[0].replace(
        "Module module/dm-loop.ko (SHA-1 0123456789ab).\n", "") == old.split("## Setup cost")[0]
    assert md.split("## Targets")[1] == old.split("## Targets")[1]
    rows = read_csv(tmp_path / "bench.csv")
    ur = {r["stack"]: r for r in rows if r["bench"] == "io_uring"}
    assert set(ur) == {"linear", "dmloop-block"}
    assert (ur["dmloop-block"]["workload"], ur["dmloop-block"]["qd"]) == ("randread-4k", "32")
    assert float(ur["dmloop-block"]["MiB/s"]) == 50.0
    assert float(ur["dmloop-block"]["x linear"]) == pytest.approx(want, abs=0.006)
    assert len([r for r in rows if r["bench"] == "file"]) == len(raw["fio"])


def test_junit_counts_the_uring_stacks(tmp_path, raw):
    rc, cases = junit(tmp_path, with_uring(raw))
    assert rc == 0, cases
    assert cases["uring[linear]"] is None and cases["uring[dmloop-block]"] is None
    broken = with_uring(raw)
    broken["uring"] = [e for e in broken["uring"] if e["stack"] != "dmloop-block"]
    broken["errors"] = ["g2-dmloop-block: fio job j9: error 95, 0 I/Os"]
    (tmp_path / "b").mkdir()
    rc, cases = junit(tmp_path / "b", broken)
    assert rc == 1
    assert "error 95" in cases["uring[dmloop-block]"]
    assert [c for c, f in cases.items() if f] == ["uring[dmloop-block]"]
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "| randread-4k qd32 io_uring | dmloop-block |" not in md


def test_bench_plans_the_uring_group_in_both_modes():
    """Both modes: 4 KiB random read at queue depth 32 through io_uring with
    O_DIRECT, dm-linear and block mode only, with the mode's fio runtime and
    repetitions (1 s jobs in quick mode), over new Stack objects that share
    the fio group's set-up (run_fio keys a stack by its group)."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    import bench
    for mode, m in bench.MODES.items():
        fs = [bench.Stack(n, (lambda n=n: n), lambda: None, None) for n in (
            "linear", "dmloop-block", "dmloop-dio", "dmloop-buf", "loop-buf", "loop-dio", "file")]
        stacks, wl, reps, opts = bench.uring_group(fs, m)
        assert [s.name for s in stacks] == ["linear", "dmloop-block"], mode
        assert all(s not in fs for s in stacks)
        assert [s.up() for s in stacks] == ["linear", "dmloop-block"]
        assert wl == [("randread-4k", "randread", "4k", 32)], mode
        assert reps == m["reps"]
        assert opts["ioengine"] == "io_uring" and opts["direct"] == 1
        assert opts["runtime"] == m["runtime"] and opts["size"] == m["file_size"]
    assert bench.MODES["quick"]["runtime"] == 1


def with_setup(raw, full=False, loop_ms=(20.0, 22.0, 30.0), big_ms=(25.0, 27.0, 40.0),
               create_s=(0.030, 0.031, 0.040), linear_s=(0.020, 0.022, 0.030),
               frag_ms=(300.0, 310.0, 350.0), filefrag_v_s=(0.200, 0.180, 0.250)):
    """raw with setup rows as bench.py writes them now (walk, dm-linear
    over the same extents, filefrag -v, every figure's repetitions), at
    the quick mode's sizes or the full mode's; the recorded run predates
    them.  Figures made up: the smallest contiguous file's kernel setup
    is loop_ms, the others' big_ms; every row's creates create_s and
    linear_s; the fragmented rows' setup frag_ms and filefrag -v
    filefrag_v_s."""
    raw = json.loads(json.dumps(raw))
    raw["mode"], raw["quick"] = ("full", False) if full else ("quick", True)
    sizes = ([(1024, 0), (4096, 0), (16384, 0), (1024, 4), (4096, 16), (16384, 64)] if full
             else [(4, 0), (64, 0), (4, 4)])
    rows = []
    for n, (size, piece) in enumerate(sizes):
        ext = 262144 if full and piece else 1024 if piece else 1 + size // 1024
        ks = frag_ms if piece else loop_ms if n == 0 else big_ms
        reps = {"dmloop_create_s": list(create_s), "kernel_setup_ms": list(ks),
                "dmloop_remove_s": [0.04] * 3, "linear_create_s": list(linear_s),
                "filefrag_s": [0.05], "filefrag_v_s": list(filefrag_v_s),
                "losetup_s": [0.003] * 3}
        row = {"file": "%d MiB" % size,
               "layout": "%d KiB pieces" % piece if piece else "contiguous",
               "walk": "fiemap", "extents": ext, "filefrag_extents": ext,
               "linear_segments": ext, "table_bytes": ext * 24, "bytes_per_extent": 24.0}
        for k, v in reps.items():
            row[k] = round(statistics.median(v), 4 if k.endswith("_s") else 2)
        row["reps"] = reps
        rows.append(row)
    raw["setup"] = rows
    raw["plan"]["setup"] = len(rows)
    return raw


def setup_section(md):
    return md.split("## Setup cost", 1)[1].split("\n## ", 1)[0]


def table(sec):
    """A Markdown table's rows as dicts."""
    lines = [l for l in sec.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, [c.strip() for c in l.strip("|").split("|")])) for l in lines[2:]]


def target_lines(md):
    return {r["target"]: r for r in table(md.split("## Targets", 1)[1].split("\n## ", 1)[0])}


def test_setup_table_of_a_run_before_the_new_columns(report, raw):
    """The recorded run has no walk, dm-linear or filefrag -v figures: the
    walk column says "-", the new columns are empty, and the setup targets
    are not decided on figures that are not there."""
    _, out = report
    rows = table(setup_section((out / "bench.md").read_text()))
    assert len(rows) == len(raw["setup"])
    assert all(r["walk"] == "-" and r["create_x_linear"] == "" and r["filefrag_v_s"] == ""
               for r in rows)
    assert [r["extents"] for r in rows] == [str(s["extents"]) for s in raw["setup"]]
    tg = target_lines((out / "bench.md").read_text())
    assert not [t for t in tg if "dm-linear" in t and "create" in t or "filefrag -v" in t or
                t.startswith("setup ")]


def test_setup_ratios_and_targets_quick(tmp_path, raw):
    raw = with_setup(raw)
    p = run_report(tmp_path, raw)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "bench.md").read_text()
    rows = table(setup_section(md))
    assert [(r["file"], r["layout"], r["walk"]) for r in rows] == [
        ("4 MiB", "contiguous", "fiemap"), ("64 MiB", "contiguous", "fiemap"),
        ("4 MiB", "4 KiB pieces", "fiemap")]
    x_lin = statistics.median([0.030, 0.031, 0.040]) / statistics.median([0.020, 0.022, 0.030])
    assert all(r["create_x_linear"] == "%.2f" % x_lin for r in rows)        # 1.41
    assert rows[1]["setup_x_smallest"] == "%.2f" % (27.0 / 22.0)
    assert rows[0]["setup_x_smallest"] == "1.00" and rows[2]["setup_x_smallest"] == ""
    assert rows[2]["setup_x_filefrag_v"] == "%.2f" % (310.0 / 200.0)
    tg = target_lines(md)
    t = tg["setup 64 MiB <= 1.5x 4 MiB (kernel; quick mode's sizes)"]
    assert t["verdict"] == "met" and t["measured"].startswith("1.23x: 64 MiB 27.00 ms (25.0-40.0)")
    t = tg["dmsetup create <= 1.5x dm-linear (quick mode's sizes)"]
    assert t["verdict"] == "met" and t["measured"].startswith("highest 1.41x")
    t = tg["1,024 extents: kernel setup <= 2x filefrag -v (quick mode's sizes)"]
    assert t["verdict"] == "met" and "kernel setup 310.00 ms" in t["measured"]
    assert "filefrag -v 200.00 ms" in t["measured"]
    csv_rows = read_csv(tmp_path / "bench-setup.csv")
    assert [r["create_x_linear"] for r in csv_rows] == ["%.2f" % x_lin] * 3
    assert "reps" not in csv_rows[0]


def test_setup_targets_missed_full(tmp_path, raw):
    """Full mode's sizes and target names; a figure over its limit is NOT
    met, with the figures that missed it."""
    raw = with_setup(raw, full=True, big_ms=(700.0, 720.0, 800.0), linear_s=(0.01,) * 3,
                     filefrag_v_s=(0.1,) * 3)
    p = run_report(tmp_path, raw)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "bench.md").read_text()
    tg = target_lines(md)
    t = tg["setup 16 GiB <= 1.5x 1 GiB (kernel)"]
    assert t["verdict"] == "NOT met"
    assert t["measured"].startswith("32.73x: 16 GiB 720.00 ms (700.0-800.0), 1 GiB 22.00 ms")
    t = tg["dmsetup create <= 1.5x dm-linear"]
    assert t["verdict"] == "NOT met" and t["measured"].startswith(
        "highest 3.10x (1 GiB contiguous: 31.0 ms, dm-linear 10.0 ms)")
    t = tg["262,144 extents: kernel setup <= 2x filefrag -v"]
    assert t["verdict"] == "NOT met" and t["measured"].startswith("highest 3.10x")
    assert t["measured"].count("pieces") == 4          # the worst, then all three
    assert not [k for k in tg if "quick mode" in k]
    rc, cases = junit(tmp_path, raw)
    assert rc == 0 and cases["setup"] is None           # a missed target is no failure


def test_junit_fails_a_table_that_is_not_the_files_fiemap(tmp_path, raw):
    raw = with_setup(raw)
    raw["errors"] = ["setup 4 MiB 4 KiB pieces: dm-loop's extent table (debugfs, 1023 runs) "
                     "is not the file's FIEMAP (1024 runs): run 7 is ..."]
    rc, cases = junit(tmp_path, raw)
    assert rc == 1 and "not the file's FIEMAP" in cases["setup"]
    assert [c for c, f in cases.items() if f] == ["setup"]


def test_bench_linear_table_from_fiemap():
    """dm-linear over the file: one segment per extent, merged where an
    extent continues the one before on the disk too; a hole is an error."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    import bench
    # (logical, physical, length) in bytes, as file_extents() gives them
    ext = [(0, 8192, 4096 * 100), (4096 * 100, 8192 + 4096 * 100, 4096 * 28),
           (4096 * 128, 10 << 20, 4096 * 128), (4096 * 256, 20 << 20, 4096 * 256)]
    seg = bench.linear_segments(ext, 4096 * 300)
    assert seg == [(0, 1024, 16), (1024, 1024, 20480), (2048, 352, 40960)]
    assert bench.linear_table(seg, "/dev/vda").splitlines()[1] == "1024 1024 linear /dev/vda 20480"
    with pytest.raises(RuntimeError):
        bench.linear_segments([ext[0], ext[2]], 4096 * 256)
    # debugfs's table (split anywhere) compares equal once coalesced
    assert bench.coalesce([(0, 512, 16), (512, 512, 528), (1024, 1024, 20480),
                           (2048, 352, 40960)]) == seg
    t = bench.Table("0 8 linear /dev/vda 0\n8 8 linear /dev/vda 100")
    assert t.count == 2 and len(t.specs) == 2 * (40 + 16)   # parameters padded to 8 bytes


def test_bench_plans_the_setup_targets_rows():
    """Both modes have contiguous files 1:16 apart in size and a file of
    one extent per piece; quick mode's files stay small (CI)."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    import bench
    for mode, m in bench.MODES.items():
        cont = sorted(s for s, p in m["setup"] if not p)
        assert cont[-1] == 16 * cont[0], mode
        assert [s for s, p in m["setup"] if p], mode
    full = bench.MODES["full"]["setup"]
    assert {(1 << 30, None), (4 << 30, None), (16 << 30, None), (1 << 30, 4 << 10)} <= set(full)
    assert max(s for s, _ in bench.MODES["quick"]["setup"]) <= 64 << 20


def with_w1(raw, scale):
    """raw with the `workers 1` stacks planned and measured: each a copy of
    its default-workers stack's rows with MiB/s times `scale`."""
    raw = json.loads(json.dumps(raw))
    raw["plan"]["w1"] = True
    for group, stacks in (("fio", ("dmloop-dio", "dmloop-buf")), ("brd", ("dmloop-dio",))):
        for e in [e for e in raw[group] if e["stack"] in stacks]:
            c = json.loads(json.dumps(e))
            c["stack"] += "-w1"
            for r in c["runs"]:
                r["mib_s"] *= scale
            raw[group].append(c)
    return raw


def test_workers_1_stacks_and_their_target(tmp_path, raw):
    """A run that planned the `workers 1` stacks: their rows sit beside the
    default's, the target compares the two (met when one worker is half as
    fast, NOT met when twice), and a planned stack without rows fails."""
    rc, cases = junit(tmp_path, with_w1(raw, 0.5))
    assert rc == 0 and not [c for c, f in cases.items() if f], cases
    assert {"fio[dmloop-dio-w1]", "fio[dmloop-buf-w1]", "brd[dmloop-dio-w1]"} <= set(cases)
    md = (tmp_path / "bench.md").read_text()
    assert "| dmloop-dio-w1 |" in md and "| dmloop-buf-w1 |" in md
    line = next(l for l in md.splitlines() if "below 0.95x `workers 1`" in l)
    assert "| met |" in line and "2.00" in line, line
    for t in ("2x loop --direct-io=on (brd", "1.2x loop buffered at queue depth 32"):
        assert t in md, t
    rc, cases = junit(tmp_path, with_w1(raw, 2.0))
    assert rc == 0
    line = next(l for l in (tmp_path / "bench.md").read_text().splitlines()
                if "below 0.95x `workers 1`" in l)
    assert "NOT met" in line, line
    broken = with_w1(raw, 1.0)
    broken["fio"] = [e for e in broken["fio"] if e["stack"] != "dmloop-buf-w1"]
    rc, cases = junit(tmp_path, broken)
    assert rc == 1 and "no rows" in cases["fio[dmloop-buf-w1]"], cases


def with_sparse(raw):
    """raw plus made-up rows for the sparse XFS group (the recorded run
    predates it): MiB/s per repetition for each stack and workload."""
    raw = json.loads(json.dumps(raw))
    figures = {"full-block": {"fill-1M": [90, 100, 110], "randread-4k": [40, 50, 60],
                              "randwrite-4k": [30, 40, 50]},
               "sparse-block": {"fill-1M": [80, 90, 100], "randread-4k": [39, 49, 61],
                                "randwrite-4k": [27, 41, 52]},
               "sparse-file": {"fill-1M": [60, 70, 80], "randread-4k": [20, 25, 30],
                               "randwrite-4k": [15, 20, 25]}}
    raw["sparse"] = [{"stack": st, "workload": wl, "qd": 32,
                      "runs": [{"mib_s": v, "iops": v * 256, "cpu_us_per_io": 10.0}
                               for v in runs[:raw["reps"]]]}
                     for st, by in figures.items() for wl, runs in by.items()]
    raw.setdefault("plan", {})["sparse"] = ["fill-1M qd32", "randread-4k qd32",
                                            "randwrite-4k qd32"]
    return raw


def test_sparse_rows_ratios_and_targets(tmp_path, raw):
    """The sparse XFS table has each stack's rows with per-repetition ratios
    to block mode over a full file and to file mode; its three targets are
    decided from them; the CSV has the rows; JUnit counts the stacks."""
    raw = with_sparse(raw)
    p = run_report(tmp_path, raw)
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "bench.md").read_text()
    sec = md.split("## Block mode over a sparse", 1)[1].split("\n## ", 1)[0]
    row = [l for l in sec.splitlines() if l.startswith("| randread-4k | 32 | sparse-block |")]
    assert len(row) == 1, sec
    n = raw["reps"]
    want_full = statistics.median([a / b for a, b in zip([39, 49, 61][:n], [40, 50, 60][:n])])
    want_file = statistics.median([a / b for a, b in zip([39, 49, 61][:n], [20, 25, 30][:n])])
    assert row[0].rstrip(" |").endswith("| %.2f | %.2f" % (want_full, want_file))
    tg = md.split("## Targets", 1)[1]
    for name in ("4 KiB qd32 >= 0.95x block mode over a fully written file",
                 "4 KiB qd32 >= 1.5x file mode on the same sparse file",
                 "the first pass (1 MiB writes) >= 1.0x file mode with direct I/O"):
        line = [l for l in tg.splitlines() if name in l]
        assert len(line) == 1, tg
    fill = [l for l in tg.splitlines() if "first pass (1 MiB" in l][0]
    assert "| met |" in fill and "fill-1M qd32" in fill
    rows = [r for r in read_csv(tmp_path / "bench.csv") if r["bench"] == "sparse"]
    assert len(rows) == 9 and {r["stack"] for r in rows} == {
        "full-block", "sparse-block", "sparse-file"}
    rc, cases = junit(tmp_path, raw)
    assert rc == 0, cases
    assert all(cases["sparse[%s]" % st] is None
               for st in ("full-block", "sparse-block", "sparse-file"))


def test_junit_fails_a_missing_sparse_stack(tmp_path, raw):
    raw = with_sparse(raw)
    raw["sparse"] = [e for e in raw["sparse"] if e["stack"] != "sparse-block"]
    raw["errors"] = ["sparse-sparse-block: status block -: not block mode with holes"]
    rc, cases = junit(tmp_path, raw)
    assert rc == 1
    assert "not block mode with holes" in cases["sparse[sparse-block]"]
    assert [c for c, f in cases.items() if f] == ["sparse[sparse-block]"]
    raw = with_sparse(json.loads(RAW.read_text()))
    raw["sparse"][0]["runs"] = raw["sparse"][0]["runs"][:1]
    (tmp_path / "b").mkdir()
    rc, cases = junit(tmp_path / "b", raw)
    assert rc == 1 and "missing repetitions" in cases["sparse[full-block]"]


def test_bench_plans_the_sparse_group():
    """The sparse phase: the three stacks, a fill pass of 1 MiB writes
    (not time based) then 4 KiB random reads and writes at queue depth 32,
    in both modes by default."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    assert bench.SPARSE_STACKS == ("full-block", "sparse-block", "sparse-file")
    assert [(w[0], w[2], w[3]) for w in bench.SPARSE_WORKLOADS] == [
        ("fill-1M", "1M", 32), ("randread-4k", "4k", 32), ("randwrite-4k", "4k", 32)]
    src = (REPO / "tests" / "bench" / "bench.py").read_text()
    assert 'default="fio,brd,uring,setup,sparse,scale"' in src
