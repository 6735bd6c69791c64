"""dmloop-inspect on real dm-loop devices: compare, show, list and report
against the 6.1 kernel's debugfs tables, FIEMAP and filefrag.

Every command runs twice, as tools/dmloop-inspect and as its ASan/UBSan
build tools/dmloop-inspect-asan (leak checking on); both must exit alike,
print the same, and report nothing (inspect_util.inspect).

The filesystems (ext4 with 4 KiB and with 1 KiB blocks, XFS) live on
scratch disk 1, one at a time (module-scoped fixture `fs`), each holding a
contiguous file and a fragmented one: single blocks between used blocks,
as inspect_util.make_fragmented lays them out.
"""

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import dmloop
import inspect_util as iu
from inspect_util import inspect

FILESYSTEMS = {
    "ext4-4k": ("ext4", ("-b", "4096", "-m", "0")),
    "ext4-1k": ("ext4", ("-b", "1024", "-m", "0")),
    "xfs": ("xfs", ()),
}
CONTIG_BLOCKS = 256
FRAG_BLOCKS = 128
# name: (file, offset in filesystem blocks)
LAYOUTS = {
    "contig": ("contig", 0),
    "contig-offset": ("contig", 5),
    "frag": ("frag", 0),
    "frag-offset": ("frag", 3),
}
DEBUGFS_MOUNT = Path("/sys/kernel/debug")
DEBUGFS = DEBUGFS_MOUNT / "dm-loop"
ONLY_EXT4_4K = pytest.mark.parametrize("fs", ["ext4-4k"], indirect=True)


class Layout:
    def __init__(self, name, mp):
        self.name, self.mp = name, mp
        self.blk = os.statvfs(mp).f_bsize
        self.files = {"contig": mp / "contig.img", "frag": mp / "frag.img"}

    def table(self, file, offset_blocks=0, start=0):
        path = self.files[file]
        offset = offset_blocks * self.blk
        sectors = (os.path.getsize(path) - offset) // 512
        return "%d %d loop %s %d" % (start, sectors, path, offset), sectors


@pytest.fixture(scope="session", autouse=True)
def tools_built():
    iu.build_tools()


@pytest.fixture(scope="module", params=list(FILESYSTEMS))
def fs(request):
    """A fresh filesystem with contig.img (one extent) and frag.img (every
    block its own extent)."""
    fstype, mkfs_args = FILESYSTEMS[request.param]
    with dmloop.mounted_fs(fstype, dev=dmloop.scratch_disk(1), mkfs_args=mkfs_args) as mp:
        lay = Layout(request.param, mp)
        iu.make_contiguous(lay.files["contig"], CONTIG_BLOCKS * lay.blk, seed=1)
        iu.make_fragmented(mp, lay.files["frag"], FRAG_BLOCKS, seed=2)
        yield lay


@pytest.fixture
def mkdev():
    """mkdev(name, table): dmsetup create; returns the name.  The devices are
    removed after the test."""
    made = []

    def make(name, table):
        dmloop.create(name, table)
        made.append(name)
        return name
    yield make
    for name in reversed(made):
        if dmloop.exists(name):
            dmloop.remove(name)


def minor_of(name):
    return os.minor(os.stat("/dev/mapper/%s" % name).st_rdev)


def instances(minor):
    """debugfs directory names of dm-<minor>, by id."""
    found = [p.name for p in DEBUGFS.iterdir() if p.name.startswith("dm-%d-" % minor)]
    return sorted(found, key=lambda n: int(n.rsplit("-", 1)[1]))


def debugfs_info(inst):
    out = {}
    for line in (DEBUGFS / inst / "info").read_text().splitlines():
        k, _, v = line.partition(": ")
        out[k.rstrip(":")] = v
    return out


def debugfs_extents(inst):
    return [tuple(int(x) for x in line.split()[1:])
            for line in (DEBUGFS / inst / "extents").read_text().splitlines()
            if not line.startswith("#")]


def saved_filefrag(tmp_path, path, *opts):
    """A real `filefrag -v [opts]` output of `path`, saved as a bug reporter would."""
    text, ext = iu.filefrag(path, *opts)
    out = tmp_path / ("filefrag%s.txt" % "".join(opts))
    out.write_text(text)
    return out, ext


# ------------------------------------------------------------------ compare

@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compare_agrees_on_healthy_devices(fs, layout, mkdev):
    """compare exits 0 and says "agree" for a block-mode device over a
    contiguous or fragmented file, at offset 0 or a few blocks in, and its
    JSON shows the kernel's table with the expected number of extents."""
    file, off = LAYOUTS[layout]
    table, sectors = fs.table(file, off)
    name = mkdev("cmp", table)
    assert dmloop.status(name).split()[3] == "block"
    p = inspect("compare", name, expect=0)
    assert "fiemap %s" % fs.files[file] in p.stdout and "verdict: agree" in p.stdout
    assert "offset %d" % (off * fs.blk) in p.stdout
    doc = json.loads(inspect("compare", "--json", name, expect=0).stdout)
    (t,) = doc["targets"]
    assert doc["verdict"] == "agree" and t["mode"] == "block"
    assert (t["offset"], t["sectors"]) == (off * fs.blk, sectors)
    assert [(c["source"], c["verdict"]) for c in t["comparisons"]] == [("fiemap", "agree")]
    if file == "contig":
        assert t["kernel_extents"] == 1
    else:
        assert t["kernel_extents"] > FRAG_BLOCKS // 2 - off, t


@pytest.mark.parametrize("opts", [(), ("-b512",)], ids=["v", "v-b512"])
def test_compare_agrees_with_saved_filefrag(fs, tmp_path, opts, mkdev):
    """A real `filefrag -v` output saved in the guest agrees with the
    kernel's table, next to FIEMAP and alone (--no-fiemap), at offset 0 and
    at an offset."""
    saved, ext = saved_filefrag(tmp_path, fs.files["frag"], *opts)
    assert len(ext) > FRAG_BLOCKS // 2
    for off in (0, 3):
        name = mkdev("ff%d" % off, fs.table("frag", off)[0])
        p = inspect("compare", name, "--filefrag", saved, expect=0)
        assert re.search(r"filefrag %s: %d extents: agree" % (re.escape(str(saved)), len(ext)),
                         p.stdout), p.stdout
        if off == 0:
            p = inspect("compare", name, "--no-fiemap", "--filefrag", saved, expect=0)
            assert "fiemap" not in p.stdout and "verdict: agree" in p.stdout
        dmloop.remove(name)


def alter_physical(text, index, by):
    """Move extent `index` of a filefrag -v listing `by` units on the disk."""
    out = []
    for line in text.splitlines(keepends=True):
        m = iu.FILEFRAG_EXTENT.match(line)
        if m and int(m.group(1)) == index:
            s4, e4, s5, e5 = m.start(4), m.end(4), m.start(5), m.end(5)
            line = (line[:s4] + str(int(m.group(4)) + by).rjust(e4 - s4) + line[e4:s5] +
                    str(int(m.group(5)) + by).rjust(e5 - s5) + line[e5:])
        out.append(line)
    return "".join(out)


def test_compare_reports_an_altered_filefrag(fs, tmp_path, mkdev):
    """A saved filefrag -v with one extent moved on the disk makes compare
    exit 1 and name that extent's file byte range as shifted; FIEMAP still
    agrees."""
    saved, ext = saved_filefrag(tmp_path, fs.files["frag"])
    idx, logical, physical, length, _ = ext[len(ext) // 2]
    altered = tmp_path / "altered.txt"
    altered.write_text(alter_physical(saved.read_text(), idx, 7))
    assert altered.read_text() != saved.read_text()
    name = mkdev("alt", fs.table("frag")[0])
    start, end = logical * fs.blk, (logical + length) * fs.blk
    p = inspect("compare", name, "--filefrag", altered, expect=1)
    assert "verdict: differ" in p.stdout
    assert re.search(r"shifted\s+%d\s+%d\s" % (start, end), p.stdout), p.stdout
    doc = json.loads(inspect("compare", "--json", name, "--filefrag", altered, expect=1).stdout)
    fiemap, ff = doc["targets"][0]["comparisons"]
    assert fiemap["verdict"] == "agree" and ff["verdict"] == "differ"
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in ff["differences"]] == \
        [("shifted", start, end)]
    d = ff["differences"][0]
    assert d["file_host_byte"] - d["kernel_host_byte"] == 7 * fs.blk


@ONLY_EXT4_4K
def test_compare_file_mode_compares_nothing(fs, mkdev):
    """A file-mode device (sparse file; force_file) makes compare say so and
    exit 0 without comparing anything."""
    sparse = fs.mp / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(1 << 20)
    mkdev("fm0", "0 2048 loop %s 0" % sparse)
    mkdev("fm1", "0 2048 loop %s 0 1 force_file" % fs.files["contig"])
    for name, reason in (("fm0", "hole:0"), ("fm1", "forced")):
        assert dmloop.status(name).split()[3] == "file"
        p = inspect("compare", name, expect=0)
        assert "file mode (%s)" % reason in p.stdout
        assert "nothing to compare" in p.stdout and "verdict: file mode" in p.stdout
        doc = json.loads(inspect("compare", "--json", name, expect=0).stdout)
        assert doc["verdict"] == "file_mode" and doc["targets"][0]["comparisons"] == []


@ONLY_EXT4_4K
def test_compare_finds_the_device_when_debugfs_names_it_otherwise(fs, tmp_path, mkdev):
    """A `name` file that does not hold the dm name (modules before the fix
    printed "major:minor"; ENXIO while the device goes away) does not hide
    the device: libdevmapper gives its number.  This is the demo's
    "no dm-loop target in /sys/kernel/debug/dm-loop" failure."""
    name = mkdev("named", fs.table("frag")[0])
    (inst,) = instances(minor_of(name))
    copy = tmp_path / "debugfs"
    shutil.copytree(DEBUGFS / inst, copy / "dm-loop" / inst)
    (copy / "dm-loop" / inst / "name").write_text((DEBUGFS / inst / "dev").read_text())
    p = inspect("compare", name, expect=0, env={"DMLOOP_DEBUGFS": str(copy)})
    assert p.stdout.startswith("dm-%d (%s)" % (minor_of(name), name)), p.stdout
    p = inspect("show", "--json", name, expect=0, env={"DMLOOP_DEBUGFS": str(copy)})
    assert json.loads(p.stdout)["name"] == name


# --------------------------------------------------------------------- show

def merged_b512(ext):
    """filefrag -v -b512 extents merged where they touch, as dm-loop keeps them:
    [(file_sector, host_sector, sectors)]."""
    out = []
    for _, logical, physical, length, _ in ext:
        if out and out[-1][0] + out[-1][2] == logical and out[-1][1] + out[-1][2] == physical:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + length)
        else:
            out.append((logical, physical, length))
    return out


@ONLY_EXT4_4K
def test_show_prints_info_and_extents_like_filefrag(fs, mkdev):
    """show prints the debugfs info keys in their order and the extent table
    in filefrag -v -b512 columns: the same extents filefrag lists; every way
    of naming the device gives the same output."""
    name = mkdev("show0", fs.table("frag")[0])
    minor = minor_of(name)
    (inst,) = instances(minor)
    p = inspect("show", name, expect=0)
    lines = p.stdout.splitlines()
    assert lines[0] == "dm-%d (%s), target at sector 0 (%s)" % (minor, name, DEBUGFS / inst)
    info = debugfs_info(inst)
    keys = [m.group(1) for m in (re.match(r"  (\w+):\s+(.*)$", ln) for ln in lines[1:]) if m]
    assert keys[:len(info)] == list(info)
    mine = [(int(m.group(2)), int(m.group(4)), int(m.group(6)))
            for m in map(iu.FILEFRAG_EXTENT.match, lines) if m]
    _, theirs = iu.filefrag(fs.files["frag"], "-b512")
    assert mine == merged_b512(theirs)
    assert len(mine) == int(info["extents"]) > FRAG_BLOCKS // 2
    st = os.stat("/dev/mapper/%s" % name)
    for alias in ("/dev/mapper/%s" % name, "dm-%d" % minor, "/dev/dm-%d" % minor,
                  "%d:%d" % (os.major(st.st_rdev), minor)):
        assert inspect("show", alias, expect=0).stdout == p.stdout, alias


@ONLY_EXT4_4K
def test_show_json(fs, mkdev):
    """show --json is one JSON document: name, minor, and per target the
    info (numbers as numbers) and the extents exactly as debugfs has them."""
    off = 3
    name = mkdev("show1", fs.table("frag", off)[0])
    minor = minor_of(name)
    (inst,) = instances(minor)
    doc = json.loads(inspect("show", "--json", name, expect=0).stdout)
    assert (doc["name"], doc["minor"], doc["device"]) == (name, minor, "dm-%d (%s)" % (minor, name))
    (t,) = doc["targets"]
    assert t["instance"] == inst and t["start"] == 0
    info = debugfs_info(inst)
    assert {k: str(v) for k, v in t["info"].items()} == info
    assert t["info"]["offset"] == off * fs.blk and t["info"]["mode"] == "block"
    assert [(e["dev_sector"], e["sectors"], e["host_sector"]) for e in t["extents"]] == \
        debugfs_extents(inst)
    assert all(e["file_offset"] == off * fs.blk + e["dev_sector"] * 512 for e in t["extents"])


# --------------------------------------------------------------------- list

LIST_HEAD = ["NAME", "DEVICE", "START", "SECTORS", "MODE", "EXTENTS", "OFFSET", "PATH"]
RIGHT = {"START", "SECTORS", "EXTENTS", "OFFSET"}


def list_rows(text):
    """The rows of `list`, checked to be aligned under the header: text
    columns start where their heading starts, numbers end where it ends."""
    lines = text.splitlines()
    head = lines[0]
    assert head.split() == LIST_HEAD
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", head)]
    rows = []
    for line in lines[1:]:
        cells = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", line)]
        cells = cells[:7] + [(cells[7][0], len(line), line[cells[7][0]:])]
        for col, (s, e), (cs, ce, _) in zip(LIST_HEAD, spans, cells):
            if col in RIGHT:
                assert ce == e, "%s not right-aligned: %r\n%s" % (col, line, text)
            else:
                assert cs == s, "%s not left-aligned: %r\n%s" % (col, line, text)
        rows.append(dict(zip(LIST_HEAD, (c[2] for c in cells))))
    return rows


@ONLY_EXT4_4K
def test_list_human_and_json(fs, mkdev):
    """list shows every loop target, block and file mode, with name, dm-N,
    start, length, mode, extents, offset and path, in aligned columns; --json
    holds the same as a list of objects, plus the table and status."""
    sparse = fs.mp / "list-sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(1 << 20)
    devs = {
        "lst-a": fs.table("contig"),
        "lst-b": fs.table("frag", 3),
        "lst-c": ("0 2048 loop %s 0" % sparse, 2048),
    }
    for name, (table, _) in devs.items():
        mkdev(name, table)
    rows = list_rows(inspect("list", expect=0).stdout)
    docs = json.loads(inspect("list", "--json", expect=0).stdout)
    assert [r["NAME"] for r in rows] == [d["name"] for d in docs] == list(devs)
    for row, doc, (name, (table, sectors)) in zip(rows, docs, devs.items()):
        st = dmloop.status(name).split()
        path, offset = table.split()[3], int(table.split()[4])
        want = [name, "dm-%d" % minor_of(name), "0", str(sectors), st[3], st[4],
                str(offset), path]
        assert [row[c] for c in LIST_HEAD] == want
        assert doc["device"] == want[1] and doc["minor"] == minor_of(name)
        assert (doc["start"], doc["sectors"], doc["mode"], doc["extents"]) == \
            (0, sectors, st[3], int(st[4]))
        assert (doc["path"], doc["offset"], doc["read_only"]) == (path, offset, False)
        assert doc["reason"] == st[9] and doc["status"] == " ".join(st[3:])
        assert doc["table"] == " ".join(dmloop.table(name).split()[3:])


def test_list_with_no_devices():
    """With no dm device at all, list prints its header only and --json an
    empty list, exit 0."""
    assert dmloop.dm_devices() == [], "a device is left over"
    assert inspect("list", expect=0).stdout.split() == LIST_HEAD
    assert json.loads(inspect("list", "--json", expect=0).stdout) == []


@ONLY_EXT4_4K
def test_reload_pair_shows_the_live_table(fs, tmp_path, mkdev):
    """During `dmsetup reload` without resume two debugfs instances of the
    target exist; show, list and compare use the live one (over contig.img),
    report keeps both directories; after resume the new one (frag.img)."""
    name = mkdev("rl", fs.table("contig")[0])
    minor = minor_of(name)
    dmloop.reload(name, fs.table("frag")[0])
    live, new = instances(minor)
    assert debugfs_info(new)["path"] == str(fs.files["frag"])
    doc = json.loads(inspect("show", "--json", name, expect=0).stdout)
    assert [t["instance"] for t in doc["targets"]] == [live]
    assert doc["targets"][0]["info"]["path"] == str(fs.files["contig"])
    assert "frag.img" not in inspect("show", name, expect=0).stdout
    (row,) = list_rows(inspect("list", expect=0).stdout)
    assert row["PATH"] == str(fs.files["contig"])
    p = inspect("compare", name, expect=0)
    assert "fiemap %s: 1 extent: agree" % fs.files["contig"] in p.stdout
    out = tmp_path / "rl.tar.gz"
    inspect("report", name, "-o", out, expect=0, same_output=False)
    members = tar_list(out)
    for inst in (live, new):
        assert "rl/debugfs/%s/extents" % inst in members
    dmloop.resume(name)
    assert instances(minor) == [new]
    doc = json.loads(inspect("show", "--json", name, expect=0).stdout)
    assert doc["targets"][0]["info"]["path"] == str(fs.files["frag"])
    assert "fiemap %s" % fs.files["frag"] in inspect("compare", name, expect=0).stdout


@ONLY_EXT4_4K
def test_two_target_table(fs, tmp_path, mkdev):
    """A device with two loop targets (contig.img, then frag.img at sector
    A): show and list give both, compare agrees on both, and with --filefrag
    it wants --start, then agrees for the target chosen."""
    t0, a = fs.table("contig")
    t1, b = fs.table("frag", start=a)
    name = mkdev("two", t0 + "\n" + t1)
    doc = json.loads(inspect("show", "--json", name, expect=0).stdout)
    assert [(t["start"], t["info"]["path"]) for t in doc["targets"]] == \
        [(0, str(fs.files["contig"])), (a, str(fs.files["frag"]))]
    human = inspect("show", name, expect=0).stdout
    assert "target at sector 0 " in human and "target at sector %d " % a in human
    rows = list_rows(inspect("list", expect=0).stdout)
    assert [(r["NAME"], r["START"], r["SECTORS"], r["PATH"]) for r in rows] == \
        [(name, "0", str(a), str(fs.files["contig"])), (name, str(a), str(b), str(fs.files["frag"]))]
    p = inspect("compare", name, expect=0)
    assert len(re.findall(r"extents?: agree", p.stdout)) == 2, p.stdout
    saved, _ = saved_filefrag(tmp_path, fs.files["frag"])
    p = inspect("compare", name, "--filefrag", saved, expect=2)
    assert "--start" in p.stderr
    inspect("compare", name, "--start", a, "--filefrag", saved, expect=0)
    inspect("compare", name, "--start", 0, "--no-fiemap", "--filefrag", saved, expect=1)


# ------------------------------------------------------------------- report

def tar_list(archive):
    p = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True)
    return p.stdout.splitlines()


def report(tmp_path, device, tag, env=None):
    """report DEVICE with both binaries; checks each archive: `tar -tzf`
    lists it, every file in it is non-empty.  Returns the plain binary's
    (members, {relative path: text})."""
    result = None
    for binary in iu.BINARIES:
        out = tmp_path / ("%s-%s.tar.gz" % (tag, binary))
        p = iu.run_tool(binary, "report", device, "-o", out, expect=0, env=env)
        assert str(out) in p.stdout
        members = tar_list(out)
        top = "%s-%s" % (tag, binary)
        assert members and all(m == top + "/" or m.startswith(top + "/") for m in members)
        files = {}
        with tarfile.open(out) as t:
            for m in t.getmembers():
                if m.isfile():
                    data = t.extractfile(m).read()
                    assert data, "%s is empty in %s" % (m.name, out)
                    files[m.name[len(top) + 1:]] = data.decode("utf-8", "replace")
                else:
                    assert m.isdir(), m.name
        assert {m.rstrip("/")[len(top) + 1:] for m in members if m.rstrip("/") != top} >= set(files)
        if result is None:
            result = (members, files)
    return result


def summary(files):
    """SUMMARY as {key: value} of its "key:   value" lines (first occurrence)."""
    out = {}
    for line in files["SUMMARY"].splitlines():
        m = re.match(r"(\w[\w ]*?):\s+(.*)$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


REPORT_FILES = ["SUMMARY", "MISSING", "uname", "module/version", "module/parameters/total_extents",
                "dmsetup/table", "dmsetup/status", "dmsetup/info", "dmsetup/deps",
                "file/stat", "file/filefrag-v", "file/filefrag-v-b512", "file/statfs",
                "file/mountinfo", "file/host/size", "file/host/queue/logical_block_size",
                "device/size", "device/queue/logical_block_size",
                "compare.txt", "compare.json", "kernel-log"]


@ONLY_EXT4_4K
def test_report_archive_is_complete(fs, tmp_path, mkdev):
    """report writes an archive `tar -tzf` lists, with every part present and
    non-empty; SUMMARY names the device, the mode and the verdict; nothing
    is missing."""
    name = mkdev("rep", fs.table("frag", 3)[0])
    minor = minor_of(name)
    (inst,) = instances(minor)
    _, files = report(tmp_path, name, "rep")
    for f in REPORT_FILES + ["debugfs/%s/%s" % (inst, x) for x in ("info", "extents", "name", "dev")]:
        assert f in files, f
    s = summary(files)
    assert s["device"] == "dm-%d (%s)" % (minor, name)
    assert s["mode"] == "block" and s["comparison"].startswith("agree")
    assert s["file"].startswith("%s, offset %d" % (fs.files["frag"], 3 * fs.blk))
    assert s["filesystem"].startswith("ext4 ") and "block size 4096" in s["filesystem"]
    assert s["missing"] == "0 parts"
    assert files["MISSING"].startswith("nothing")
    assert json.loads(files["compare.json"])["verdict"] == "agree"
    assert files["debugfs/%s/extents" % inst] == (DEBUGFS / inst / "extents").read_text()
    assert files["dmsetup/table"].split()[3] == str(fs.files["frag"])
    assert "extents found" in files["file/filefrag-v"]
    assert "dm-loop" in files["kernel-log"] or "dm_loop" in files["kernel-log"]


@ONLY_EXT4_4K
def test_report_file_mode(fs, tmp_path, mkdev):
    """A file-mode device's report says file mode, its reason, and that
    there was nothing to compare."""
    name = mkdev("repf", "0 2048 loop %s 0 1 force_file" % fs.files["contig"])
    _, files = report(tmp_path, name, "repf")
    s = summary(files)
    assert s["device"] == "dm-%d (%s)" % (minor_of(name), name)
    assert s["mode"] == "file, reason forced"
    assert s["comparison"] == "file mode: nothing to compare"


def mounted(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


@ONLY_EXT4_4K
def test_report_without_debugfs(fs, tmp_path, mkdev):
    """With debugfs unmounted the report still holds everything else (mode,
    extent count and file from device-mapper), and MISSING and SUMMARY say
    the debugfs tree and the comparison are missing and why."""
    name = mkdev("nodbg", fs.table("frag")[0])
    minor = minor_of(name)
    (inst,) = instances(minor)
    if mounted(DEBUGFS_MOUNT / "tracing"):
        dmloop.run(["umount", str(DEBUGFS_MOUNT / "tracing")])
    dmloop.run(["umount", str(DEBUGFS_MOUNT)])
    try:
        assert not (DEBUGFS / inst).exists()
        _, files = report(tmp_path, name, "nodbg")
    finally:
        dmloop.run(["mount", "-t", "debugfs", "debugfs", str(DEBUGFS_MOUNT)])
    assert (DEBUGFS / inst / "extents").exists(), "debugfs did not come back"
    assert not any(f.startswith("debugfs/") for f in files)
    missing = files["MISSING"]
    assert re.search(r"^debugfs: %s: No such file or directory" % re.escape(str(DEBUGFS)),
                     missing, re.M), missing
    assert re.search(r"^compare: needs the debugfs extent table", missing, re.M), missing
    s = summary(files)
    assert s["device"] == "dm-%d (%s)" % (minor, name)
    assert s["mode"] == "block" and s["comparison"].startswith("not done")
    assert s["extents"] == dmloop.status(name).split()[4]
    assert s["missing"] == "2 parts:"
    for f in ("dmsetup/table", "file/filefrag-v", "file/stat", "device/size"):
        assert f in files, f


def test_report_device_gone(tmp_path):
    """A report on a device that no longer exists (by name and by number)
    still writes the system parts, and says the device is not there."""
    lay_dir, name = tmp_path / "mnt", "gone"
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(0), mountpoint=lay_dir) as mp:
        iu.make_contiguous(mp / "img", 1 << 20, seed=3)
        dmloop.create(name, "0 2048 loop %s 0" % (mp / "img"))
        minor = minor_of(name)
        dmloop.remove(name)
    for device, tag in ((name, "gone-name"), ("dm-%d" % minor, "gone-minor")):
        _, files = report(tmp_path, device, tag)
        s = summary(files)
        assert s["device"].startswith(device) and s["device"].endswith("not found)")
        assert s["comparison"].startswith("not done")
        missing = files["MISSING"]
        assert re.search(r"^debugfs: .*%s" % re.escape(device), missing, re.M), missing
        assert re.search(r"^device-mapper: no device '%s'" % re.escape(device), missing, re.M)
        assert re.search(r"^dmsetup: no device-mapper device", missing, re.M), missing
        for f in ("uname", "module/version", "kernel-log", "SUMMARY", "MISSING"):
            assert f in files, f
        assert not any(f.startswith(("file/", "dmsetup/", "debugfs/")) for f in files)
