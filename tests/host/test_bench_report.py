# SPDX-License-Identifier: GPL-2.0
"""make bench's host half, without a VM: report.py over results recorded
from a real bench-quick run (fixtures/bench/raw-quick.json), and bench.py's
fio driver failing a stack loudly instead of leaving a zero row."""
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
