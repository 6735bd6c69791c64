# SPDX-License-Identifier: GPL-2.0
"""dmloop-inspect on the host: no kernel module, fixtures instead.

Every case runs against the normal binary and the ASan/UBSan one
(tools/dmloop-inspect-asan, LeakSanitizer on); any sanitizer report fails
the case. Fixtures: fixtures/filefrag/ holds real filefrag 1.47 outputs
captured by fixtures/capture.sh on ext4 (4 KiB, 1 KiB blocks) and XFS;
fixtures/debugfs/ holds debugfs trees consistent with them (DMLOOP_DEBUGFS
points at one). Cases that need a live FIEMAP make their own files in
tmp_path and a debugfs tree that describes them.
"""
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
FF = os.path.join(ROOT, "fixtures", "filefrag")
DBG = os.path.join(ROOT, "fixtures", "debugfs")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer",
                   "AddressSanitizer:DEADLYSIGNAL")
SANITIZER_EXIT = 99


@pytest.fixture(scope="session", params=["dmloop-inspect", "dmloop-inspect-asan"])
def binary(request):
    subprocess.run(["make", "-s", "-C", TOOLS, request.param], check=True)
    return os.path.join(TOOLS, request.param)


class Tool:
    """Runs the binary; fails on a sanitizer report, a signal, or an
    unexpected exit status."""

    def __init__(self, binary):
        self.binary = binary

    def __call__(self, *args, debugfs=None, expect=None, cwd=None, stdin=None):
        env = dict(os.environ)
        env.pop("DMLOOP_DEBUGFS", None)
        if debugfs is not None:
            env["DMLOOP_DEBUGFS"] = str(debugfs)
        env["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=%d" % SANITIZER_EXIT
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=%d" % SANITIZER_EXIT
        p = subprocess.run([self.binary] + [str(a) for a in args], env=env,
                           capture_output=True, cwd=cwd, timeout=120,
                           stdin=subprocess.DEVNULL)
        p.stdout = p.stdout.decode("utf-8", "replace")
        p.stderr = p.stderr.decode("utf-8", "replace")
        for mark in SANITIZER_MARKS:
            assert mark not in p.stderr, p.stderr
        assert p.returncode >= 0, "killed by signal %d: %s" % (-p.returncode, p.stderr)
        assert p.returncode != SANITIZER_EXIT, p.stderr
        if expect is not None:
            assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        if p.returncode == 2:
            assert p.stderr.startswith("dmloop-inspect"), p.stderr
        return p


@pytest.fixture
def tool(binary):
    return Tool(binary)


def ff(name):
    return os.path.join(FF, name)


def tree(name):
    return os.path.join(DBG, name)


def instance_dir(tree_root, minor, start, ident):
    return os.path.join(tree_root, "dm-loop", "dm-%d-%d-%d" % (minor, start, ident))


# ---------------------------------------------------------------- helpers

def write_extents(path, host, extents, count=None, magic=None):
    """extents: (dev_sector, sectors, host_sector) for v1, with a fourth
    item, the state, for v2 (a sparse file's table)."""
    v2 = any(len(e) == 4 for e in extents)
    if magic is None:
        magic = "# dm-loop extents v%d" % (2 if v2 else 1)
    lines = [magic, "# host %s extents %d" % (host, len(extents) if count is None else count),
             "# index dev_sector sectors host_sector" + (" state" if v2 else "")]
    lines += ["%d %s" % (i, " ".join(str(x) for x in e)) for i, e in enumerate(extents)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_info(dest, **kv):
    keys = ["version", "mode", "reason", "path", "inode", "host_dev", "offset",
            "fs_block_size", "dev_sectors", "extents", "table_bytes", "setup_ns",
            "reads", "writes", "flushes", "splits", "direct_ios", "buffered_ios"]
    values = {"version": "1.0.0", "mode": "block", "reason": "-", "inode": 12,
              "fs_block_size": 4096, "table_bytes": 0, "setup_ns": 1000,
              "reads": 0, "writes": 0, "flushes": 0, "splits": 0,
              "direct_ios": 0, "buffered_ios": 0}
    values.update(kv)
    with open(dest, "w") as f:
        for k in keys:
            if k in values:
                f.write("%s: %s\n" % (k, values[k]))


def make_instance(root, minor, start, ident, name, path, host, offset, sectors,
                  extents, mode="block", reason="-"):
    d = instance_dir(root, minor, start, ident)
    os.makedirs(d)
    with open(os.path.join(d, "name"), "w") as f:
        f.write(name + "\n")
    with open(os.path.join(d, "dev"), "w") as f:
        f.write("254:%d\n" % minor)
    write_info(os.path.join(d, "info"), mode=mode, reason=reason, path=path,
               host_dev=host, offset=offset, dev_sectors=sectors,
               extents=len(extents))
    write_extents(os.path.join(d, "extents"), host, extents)
    return d


def read_extents(path):
    host, ext = None, []
    for line in open(path):
        if line.startswith("# host "):
            host = line.split()[2]
        elif not line.startswith("#"):
            words = line.split()[1:]
            ext.append(tuple(int(x) for x in words[:3]) + tuple(words[3:]))
    return host, ext


def copy_tree(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(tree(name), dst)
    return dst


EXT_RE = re.compile(r"^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):(.*)$")


def filefrag_b512(path):
    """filefrag's own view (the independent oracle): [(sector, host, n, flags)]."""
    p = subprocess.run(["filefrag", "-v", "-b512", str(path)], capture_output=True,
                       text=True)
    if p.returncode != 0 or "extents found" not in p.stdout and "extent found" not in p.stdout:
        pytest.skip("filefrag does not work here: %s" % p.stderr.strip())
    out = []
    for line in p.stdout.splitlines():
        m = EXT_RE.match(line)
        if m:
            out.append((int(m.group(1)), int(m.group(3)), int(m.group(5)), m.group(6)))
    return out


def merged(ext, offset=0, sectors=None):
    """dm-loop's table for a file, from filefrag -b512 extents."""
    first = offset // 512
    out = []
    for l, p, n, _ in ext:
        lo, hi = max(l, first), l + n if sectors is None else min(l + n, first + sectors)
        if lo >= hi:
            continue
        dev, host, cnt = lo - first, p + lo - l, hi - lo
        if out and out[-1][0] + out[-1][1] == dev and out[-1][2] + out[-1][1] == host:
            out[-1] = (out[-1][0], out[-1][1] + cnt, out[-1][2])
        else:
            out.append((dev, cnt, host))
    return out


def devno(path):
    st = os.stat(path)
    return "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))


def write_fragmented(path, chunk=65536, count=8):
    """A real file with several extents: interleaved with a filler, synced."""
    filler = str(path) + ".filler"
    with open(path, "wb") as f, open(filler, "wb") as g:
        for i in range(count):
            f.write(os.urandom(chunk))
            f.flush()
            os.fsync(f.fileno())
            g.write(os.urandom(chunk))
            g.flush()
            os.fsync(g.fileno())


@pytest.fixture
def live(tmp_path):
    """A real file in tmp_path and a debugfs tree whose dm-7 maps all of it."""
    img = tmp_path / "img"
    write_fragmented(img)
    ext = filefrag_b512(img)
    if any(f.strip() and ("unknown" in f or "delalloc" in f) for *_, f in ext):
        pytest.skip("file system reports unknown/delalloc extents after fsync")
    root = tmp_path / "debugfs"
    size = os.path.getsize(img)
    make_instance(root, 7, 0, 1, "live0", str(img), devno(img), 0, size // 512,
                  merged(ext))
    return {"img": img, "root": root, "ext": ext, "size": size}


# ------------------------------------------------------------ the CLI itself

def test_help_and_version(tool):
    p = tool("--help", expect=0)
    for word in ("list", "show", "compare", "report", "--extents", "--filefrag", "--json"):
        assert word in p.stdout
    assert tool("--version", expect=0).stdout.strip() == "dmloop-inspect 1.1.0"
    for cmd in ("list", "show", "compare", "report"):
        assert "Usage:" in tool(cmd, "--help", expect=0).stdout


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["show"], ["compare"],
                                  ["show", "a", "b"], ["compare", "--bogus", "x"],
                                  ["report"], ["list", "extra"],
                                  ["compare", "--extents", "x", "dm-0"]])
def test_bad_usage_exits_2(tool, args):
    p = tool(*args, expect=2)
    assert p.stderr


# ------------------------------------------------------------------- compare

AGREE = [
    # tree, device, filefrag fixtures of the same file
    ("ext4-4k", "contig", ["ext4-4k-contig.txt", "ext4-4k-contig.b512.txt", "ext4-4k-contig.e.txt"]),
    ("ext4-4k", "frag", ["ext4-4k-frag.txt", "ext4-4k-frag.b512.txt", "ext4-4k-frag.e.txt",
                         "ext4-4k-frag.b4096.txt"]),
    ("ext4-4k", "big", ["ext4-4k-big.txt", "ext4-4k-big.b512.txt", "ext4-4k-big.e.txt"]),
    ("ext4-1k", "frag1k", ["ext4-1k-frag.txt", "ext4-1k-frag.b512.txt", "ext4-1k-frag.e.txt"]),
    ("xfs", "xfrag", ["xfs-frag.txt", "xfs-frag.b512.txt", "xfs-frag.e.txt"]),
]


@pytest.mark.parametrize("tree_name,dev,files", AGREE, ids=[a[1] for a in AGREE])
def test_compare_agrees(tool, tree_name, dev, files):
    for name in files:
        p = tool("compare", dev, "--no-fiemap", "--filefrag", ff(name),
                 debugfs=tree(tree_name), expect=0)
        assert "agree" in p.stdout and "verdict: agree" in p.stdout


def test_ext4_split_at_32768_blocks_agrees_with_merged_kernel_extent(tool):
    """ext4 stores at most 32768 blocks per extent; dm-loop merges the run."""
    host, ext = read_extents(os.path.join(instance_dir(tree("ext4-4k"), 2, 0, 3), "extents"))
    assert len(ext) == 1 and ext[0][1] > 32768 * 8
    split = open(ff("ext4-4k-big.split.txt")).read()
    assert "32768:" in split and split.count("..") >= 4
    p = tool("compare", "big", "--no-fiemap", "--filefrag", ff("ext4-4k-big.split.txt"),
             debugfs=tree("ext4-4k"), expect=0)
    assert "2 extents: agree" in p.stdout


@pytest.mark.parametrize("tree_name,dev,minor,ident,fixture,offset", [
    ("ext4-4k", "frag-off", 5, 6, "ext4-4k-frag.b512.txt", 131072),
    ("ext4-4k", "frag-off", 5, 6, "ext4-4k-frag.txt", 131072),
    ("ext4-1k", "frag1k-off", 1, 2, "ext4-1k-frag.txt", 3072),
    ("ext4-1k", "frag1k-off", 1, 2, "ext4-1k-frag.b512.txt", 3072),
])
def test_compare_nonzero_offset(tool, tree_name, dev, minor, ident, fixture, offset):
    p = tool("compare", dev, "--no-fiemap", "--filefrag", ff(fixture),
             debugfs=tree(tree_name), expect=0)
    assert "offset %d" % offset in p.stdout
    # The same table read as if the device started at byte 0 is shifted.
    d = instance_dir(tree(tree_name), minor, 0, ident)
    sectors = re.search(r"dev_sectors: (\d+)", open(os.path.join(d, "info")).read()).group(1)
    p = tool("compare", "--json", "--extents", os.path.join(d, "extents"),
             "--sectors", sectors, "--filefrag", ff(fixture), expect=1)
    assert json.loads(p.stdout)["verdict"] == "differ"


def test_file_mode_compares_nothing(tool):
    p = tool("compare", "prealloc", debugfs=tree("ext4-4k"), expect=0)
    assert "file mode" in p.stdout and "unwritten:64" in p.stdout
    p = tool("compare", "--json", "xclone", debugfs=tree("xfs"), expect=0)
    assert json.loads(p.stdout)["verdict"] == "file_mode"


def mutate(tmp_path, tree_name, minor, start, ident, fn):
    root = copy_tree(tmp_path, tree_name)
    path = os.path.join(instance_dir(root, minor, start, ident), "extents")
    host, ext = read_extents(path)
    ext = fn([list(e) for e in ext])
    write_extents(path, host, ext)
    return root


def differences(tool, root, dev, fixture):
    p = tool("compare", "--json", dev, "--no-fiemap", "--filefrag", ff(fixture),
             debugfs=root, expect=1)
    doc = json.loads(p.stdout)
    assert doc["verdict"] == "differ"
    human = tool("compare", dev, "--no-fiemap", "--filefrag", ff(fixture),
                 debugfs=root, expect=1).stdout
    return doc["targets"][0]["comparisons"][0]["differences"], human


def test_compare_missing_range(tool, tmp_path):
    # frag's extent 2 covers file sectors 256..511: drop it.
    root = mutate(tmp_path, "ext4-4k", 1, 0, 2, lambda e: e[:2] + e[3:])
    diffs, human = differences(tool, root, "frag", "ext4-4k-frag.txt")
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in diffs] == \
        [("missing", 131072, 262144)]
    assert diffs[0]["kernel_host_byte"] is None and diffs[0]["file_host_byte"] > 0
    assert re.search(r"missing\s+131072\s+262144", human)


def test_compare_shifted_range(tool, tmp_path):
    def shift(e):
        e[3][2] += 8
        return e
    root = mutate(tmp_path, "ext4-4k", 1, 0, 2, shift)
    diffs, human = differences(tool, root, "frag", "ext4-4k-frag.b512.txt")
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in diffs] == \
        [("shifted", 262144, 524288)]
    assert diffs[0]["kernel_host_byte"] - diffs[0]["file_host_byte"] == 4096
    assert "4096 bytes past" in human and re.search(r"shifted\s+262144\s+524288", human)


def test_compare_extra_range_over_a_hole(tool, tmp_path):
    """The kernel maps a range where the file has a hole (sparse.img)."""
    root = tmp_path / "dbg"
    _, ext_ff = None, []
    text = open(ff("ext4-4k-sparse.b512.txt")).read()
    ext = [(int(m.group(1)), int(m.group(3)), int(m.group(5)), "")
           for m in map(EXT_RE.match, text.splitlines()) if m]
    assert len(ext) == 2 and ext[1][0] == 1024  # data at 0..64K and 512K..576K
    table = [(0, 1152, ext[0][1])]  # one run over data, hole and data
    make_instance(root, 0, 0, 1, "sparse", "/mnt/dmloop-fixtures/ext4-4k/sparse.img",
                  "7:0", 0, 1152, table)
    diffs, _ = differences(tool, root, "sparse", "ext4-4k-sparse.b512.txt")
    kinds = [(d["kind"], d["file_start"], d["file_end"]) for d in diffs]
    # The second data run may or may not sit where the one run puts it.
    assert kinds[0] == ("extra", 65536, 524288)
    assert all(k == "shifted" and a >= 524288 for k, a, _ in kinds[1:])


def test_compare_gap_over_a_hole_is_unmapped(tool, tmp_path):
    root = tmp_path / "dbg"
    text = open(ff("ext4-4k-sparse.b512.txt")).read()
    ext = [(int(m.group(1)), int(m.group(3)), int(m.group(5)), "")
           for m in map(EXT_RE.match, text.splitlines()) if m]
    make_instance(root, 0, 0, 1, "sparse", "/x", "7:0", 0, 1152, merged(ext))
    diffs, _ = differences(tool, root, "sparse", "ext4-4k-sparse.b512.txt")
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in diffs] == \
        [("unmapped", 65536, 524288)]


@pytest.mark.parametrize("fixture,flag", [("xfs-clone.txt", "shared"),
                                          ("ext4-4k-prealloc.txt", "unwritten"),
                                          ("xfs-prealloc.b512.txt", "unwritten")])
def test_block_mode_over_unmappable_extents_is_a_difference(tool, tmp_path, fixture, flag):
    b512 = fixture.replace(".txt", ".b512.txt") if ".b512" not in fixture else fixture
    text = open(ff(b512)).read()
    ext = [(int(m.group(1)), int(m.group(3)), int(m.group(5)), m.group(6))
           for m in map(EXT_RE.match, text.splitlines()) if m]
    root = tmp_path / "dbg"
    make_instance(root, 0, 0, 1, "bad", "/x", "7:2", 0, 2048, merged(ext))
    diffs, human = differences(tool, root, "bad", fixture)
    assert diffs and all(d["kind"] == "unmappable" for d in diffs)
    assert all(flag in d["file_flags"] for d in diffs)
    assert flag in human


def test_reload_uses_the_live_instance(tool):
    """dm-3-0-4 (frag) is live, dm-3-0-9 (contig) is the table being loaded."""
    p = tool("show", "reload", debugfs=tree("ext4-4k"), expect=0)
    assert "frag.img" in p.stdout and "contig.img" not in p.stdout
    tool("compare", "reload", "--no-fiemap", "--filefrag", ff("ext4-4k-frag.txt"),
         debugfs=tree("ext4-4k"), expect=0)


def test_multi_target_device(tool):
    p = tool("show", "--json", "multi", debugfs=tree("ext4-4k"), expect=0)
    doc = json.loads(p.stdout)
    assert [t["start"] for t in doc["targets"]] == [0, 2048]
    p = tool("compare", "multi", "--no-fiemap", "--filefrag", ff("ext4-4k-frag.txt"),
             debugfs=tree("ext4-4k"), expect=2)
    assert "--start" in p.stderr
    tool("compare", "multi", "--start", 2048, "--no-fiemap", "--filefrag",
         ff("ext4-4k-frag.txt"), debugfs=tree("ext4-4k"), expect=0)
    tool("compare", "multi", "--start", 0, "--no-fiemap", "--filefrag",
         ff("ext4-4k-contig.txt"), debugfs=tree("ext4-4k"), expect=0)
    tool("compare", "multi", "--start", 7, "--no-fiemap", "--filefrag",
         ff("ext4-4k-contig.txt"), debugfs=tree("ext4-4k"), expect=2)


# ------------------------------------------------ compare without a kernel

def test_offline_compare_with_info(tool):
    d = instance_dir(tree("ext4-4k"), 5, 0, 6)
    p = tool("compare", "--extents", os.path.join(d, "extents"), "--info",
             os.path.join(d, "info"), "--filefrag", ff("ext4-4k-frag.txt"), expect=0)
    assert "offset 131072" in p.stdout


def test_offline_compare_with_offset_and_sectors(tool):
    d = instance_dir(tree("ext4-1k"), 1, 0, 2)
    tool("compare", "--extents", os.path.join(d, "extents"), "--offset", 3072,
         "--sectors", 138, "--filefrag", ff("ext4-1k-frag.txt"), expect=0)
    tool("compare", "--extents", os.path.join(d, "extents"), "--offset", "0xc00",
         "--sectors", 138, "--filefrag", ff("ext4-1k-frag.e.txt"), expect=0)
    # Several saved outputs at once: all must agree.
    tool("compare", "--extents", os.path.join(d, "extents"), "--offset", 3072,
         "--sectors", 138, "--filefrag", ff("ext4-1k-frag.txt"),
         "--filefrag", ff("ext4-1k-frag.b512.txt"), expect=0)


def test_offline_empty_table_is_file_mode(tool, tmp_path):
    e = tmp_path / "extents"
    write_extents(e, "0:0", [])
    p = tool("compare", "--extents", e, "--sectors", 16, "--filefrag",
             ff("ext4-4k-frag.txt"), expect=0)
    assert "file mode" in p.stdout


@pytest.mark.parametrize("args,needle", [
    (["--info", "I", "--offset", "0"], "conflicts"),
    (["--info", "I", "--sectors", "8"], "conflicts"),
    ([], "--sectors"),
    (["--sectors", "8", "--no-fiemap"], "needs a device"),
    (["--sectors", "8", "--start", "0"], "needs a device"),
    (["--sectors", "-1"], "unsigned"),
    (["--sectors", "18446744073709551616"], "unsigned"),
    (["--sectors", "12abc"], "unsigned"),
])
def test_offline_compare_usage_errors(tool, args, needle):
    d = instance_dir(tree("ext4-4k"), 1, 0, 2)
    args = [os.path.join(d, "info") if a == "I" else a for a in args]
    p = tool("compare", "--extents", os.path.join(d, "extents"), *args,
             "--filefrag", ff("ext4-4k-frag.txt"), expect=2)
    assert needle in p.stderr


def test_offline_compare_needs_a_file_side(tool):
    d = instance_dir(tree("ext4-4k"), 1, 0, 2)
    p = tool("compare", "--extents", os.path.join(d, "extents"), "--sectors", 8, expect=2)
    assert "--fiemap" in p.stderr


def test_device_past_the_end_of_the_length_is_an_error(tool, tmp_path):
    e = tmp_path / "extents"
    write_extents(e, "7:0", [(0, 64, 1000)])
    p = tool("compare", "--extents", e, "--sectors", 32, "--filefrag",
             ff("ext4-4k-frag.txt"), expect=2)
    assert "past the device" in p.stderr


# ------------------------------------------------------------ live FIEMAP

def test_fiemap_agrees(tool, live):
    p = tool("compare", "live0", debugfs=live["root"], expect=0)
    assert "fiemap %s" % live["img"] in p.stdout and "agree" in p.stdout
    doc = json.loads(tool("compare", "--json", "dm-7", debugfs=live["root"], expect=0).stdout)
    assert doc["targets"][0]["comparisons"][0]["source"] == "fiemap"


def test_fiemap_and_saved_filefrag_together(tool, live, tmp_path):
    saved = tmp_path / "ff.txt"
    with open(saved, "w") as f:
        subprocess.run(["filefrag", "-v", str(live["img"])], stdout=f, check=True)
    p = tool("compare", "live0", "--filefrag", saved, debugfs=live["root"], expect=0)
    assert p.stdout.count("agree") >= 2


def test_fiemap_shifted(tool, live):
    path = os.path.join(instance_dir(live["root"], 7, 0, 1), "extents")
    host, ext = read_extents(path)
    ext = [list(e) for e in ext]
    ext[-1][2] += 1
    write_extents(path, host, ext)
    p = tool("compare", "--json", "live0", debugfs=live["root"], expect=1)
    diffs = json.loads(p.stdout)["targets"][0]["comparisons"][0]["differences"]
    assert [d["kind"] for d in diffs] == ["shifted"]
    assert diffs[0]["file_start"] == ext[-1][0] * 512
    assert diffs[0]["file_end"] == live["size"]


def test_fiemap_with_offset(tool, live, tmp_path):
    root = tmp_path / "off"
    offset = 65536
    sectors = (live["size"] - offset) // 512
    make_instance(root, 8, 0, 1, "off", str(live["img"]), devno(live["img"]), offset,
                  sectors, merged(live["ext"], offset, sectors))
    tool("compare", "off", debugfs=root, expect=0)
    # offline, FIEMAP of the same file
    d = instance_dir(root, 8, 0, 1)
    tool("compare", "--extents", os.path.join(d, "extents"), "--offset", offset,
         "--sectors", sectors, "--fiemap", live["img"], expect=0)
    tool("compare", "--extents", os.path.join(d, "extents"), "--sectors", sectors,
         "--fiemap", live["img"], expect=1)


def test_fiemap_other_host_device_differs(tool, live):
    d = instance_dir(live["root"], 7, 0, 1)
    host, ext = read_extents(os.path.join(d, "extents"))
    write_extents(os.path.join(d, "extents"), "1:234", ext)
    p = tool("compare", "live0", debugfs=live["root"], expect=1)
    assert "host device" in p.stdout and "1:234" in p.stdout


def test_fiemap_unwritten_extent_is_unmappable(tool, tmp_path):
    img = tmp_path / "prealloc"
    with open(img, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, 1 << 20)
        except OSError as e:
            pytest.skip("fallocate: %s" % e)
    ext = filefrag_b512(img)
    if not any("unwritten" in e[3] for e in ext):
        pytest.skip("this file system does not report unwritten extents")
    root = tmp_path / "dbg"
    make_instance(root, 9, 0, 1, "pre", str(img), devno(img), 0, 2048, merged(ext))
    p = tool("compare", "--json", "pre", debugfs=root, expect=1)
    diffs = json.loads(p.stdout)["targets"][0]["comparisons"][0]["differences"]
    assert diffs and all(d["kind"] == "unmappable" and "unwritten" in d["file_flags"]
                         for d in diffs)


def test_fiemap_of_a_missing_file_is_an_error(tool, tmp_path):
    root = tmp_path / "dbg"
    make_instance(root, 7, 0, 1, "gone", str(tmp_path / "nope"), "254:0", 0, 8, [(0, 8, 0)])
    p = tool("compare", "gone", debugfs=root, expect=2)
    assert "nope" in p.stderr


# ---------------------------------------------------------------------- show

@pytest.mark.parametrize("dev", ["frag", "dm-1", "/dev/dm-1", "254:1", "/dev/mapper/frag"])
def test_show_finds_the_device_every_way(tool, dev):
    p = tool("show", dev, debugfs=tree("ext4-4k"), expect=0)
    assert "dm-1 (frag)" in p.stdout and "mode:" in p.stdout
    # filefrag -v columns, so the listing can be put beside filefrag -v -b512.
    assert "ext:     logical_offset:        physical_offset: length:" in p.stdout


def test_show_extent_lines_match_filefrag_b512(tool):
    out = tool("show", "frag", debugfs=tree("ext4-4k"), expect=0).stdout
    mine = [m.groups()[:5] for m in map(EXT_RE.match, out.splitlines()) if m]
    theirs = [m.groups()[:5] for m in map(EXT_RE.match,
                                           open(ff("ext4-4k-frag.b512.txt")).read().splitlines()) if m]
    assert mine == theirs


def test_show_json(tool):
    doc = json.loads(tool("show", "--json", "frag-off", debugfs=tree("ext4-4k"), expect=0).stdout)
    t = doc["targets"][0]
    assert doc["device"] == "dm-5 (frag-off)" and doc["minor"] == 5
    assert t["info"]["mode"] == "block" and t["info"]["offset"] == 131072
    assert t["extents"][0]["file_offset"] == 131072


def test_show_json_escapes_strings(tool, tmp_path):
    root = tmp_path / "dbg"
    weird = '/srv/a "quoted"\\back\tslash\x01\u00e9'
    make_instance(root, 3, 0, 1, 'na"me', weird, "8:1", 0, 8, [(0, 8, 100)])
    with open(os.path.join(instance_dir(root, 3, 0, 1), "info"), "ab") as f:
        f.write(b"bytes: \xff\xfe\n")
    doc = json.loads(tool("show", "--json", "dm-3", debugfs=root, expect=0).stdout)
    assert doc["targets"][0]["info"]["path"] == weird
    assert doc["name"] == 'na"me'
    assert doc["targets"][0]["info"]["bytes"] == "\ufffd\ufffd"


def test_show_unknown_device(tool):
    p = tool("show", "nosuch", debugfs=tree("ext4-4k"), expect=2)
    assert "nosuch" in p.stderr
    p = tool("show", "dm-99", debugfs=tree("ext4-4k"), expect=2)
    assert "dm-99" in p.stderr


def test_show_without_debugfs(tool, tmp_path):
    p = tool("show", "dm-0", debugfs=tmp_path, expect=2)
    assert "debugfs" in p.stderr and "dm-loop" in p.stderr


def test_show_with_a_broken_extents_file(tool, tmp_path):
    root = copy_tree(tmp_path, "ext4-4k")
    with open(os.path.join(instance_dir(root, 1, 0, 2), "extents"), "w") as f:
        f.write("# dm-loop extents v1\n# host 7:0 extents 3\n0 0 8 100\n")
    p = tool("show", "frag", debugfs=root, expect=2)
    assert "mode:" in p.stdout  # info still shown
    assert "extents" in p.stderr and "truncated" in p.stderr


# ---------------------------------------------------------------------- list

def kernel_has_dm():
    try:
        return "device-mapper" in open("/proc/misc").read()
    except OSError:
        return False


def test_list(tool):
    had_control = os.path.exists("/dev/mapper/control")
    if kernel_has_dm():
        p = tool("list", expect=0)
        assert p.stdout.split()[:8] == ["NAME", "DEVICE", "START", "SECTORS", "MODE",
                                        "EXTENTS", "OFFSET", "PATH"]
        assert isinstance(json.loads(tool("list", "--json", expect=0).stdout), list)
    else:
        p = tool("list", expect=2)
        assert "device-mapper" in p.stderr and p.stdout == ""
        tool("list", "--json", expect=2)
        # A read-only tool must not create /dev/mapper/control.
        assert os.path.exists("/dev/mapper/control") == had_control


# -------------------------------------------------------------------- report

def extract(archive, tmp_path):
    with tarfile.open(archive) as t:
        names = t.getnames()
        t.extractall(tmp_path / "x")
    top = names[0].split("/")[0]
    return tmp_path / "x" / top, names


def test_report_from_a_fixture_tree(tool, tmp_path):
    out = tmp_path / "r.tar.gz"
    p = tool("report", "frag", "-o", out, debugfs=tree("ext4-4k"), expect=0)
    assert str(out) in p.stdout
    top, names = extract(out, tmp_path)
    for f in ("SUMMARY", "MISSING", "uname", "kernel-log", "compare.txt",
              "debugfs/dm-1-0-2/info", "debugfs/dm-1-0-2/extents"):
        assert (top / f).exists(), f
    summary = (top / "SUMMARY").read_text()
    assert "dm-1 (frag)" in summary and "mode:        block" in summary
    # The fixture's file is not on this machine: said so, not a failure.
    assert "frag.img: No such file" in (top / "MISSING").read_text()


def test_report_live(tool, live, tmp_path):
    out = tmp_path / "live.tgz"
    tool("report", "live0", "--output", out, debugfs=live["root"], expect=0)
    top, _ = extract(out, tmp_path)
    summary = (top / "SUMMARY").read_text()
    assert "comparison:  agree" in summary
    assert "filesystem:" in summary and "block size" in summary
    assert "extents found" in (top / "file" / "filefrag-v").read_text()
    assert (top / "file" / "stat").read_text().strip()
    assert (top / "file" / "statfs").read_text().startswith("type: ")
    assert json.loads((top / "compare.json").read_text())["verdict"] == "agree"


def test_report_differ(tool, live, tmp_path):
    path = os.path.join(instance_dir(live["root"], 7, 0, 1), "extents")
    host, ext = read_extents(path)
    write_extents(path, host, ext[1:] if len(ext) > 1 else [(e[0] + 8, e[1] - 8, e[2]) for e in ext])
    out = tmp_path / "d.tar.gz"
    tool("report", "live0", "-o", out, debugfs=live["root"], expect=0)
    top, _ = extract(out, tmp_path)
    assert "DIFFER" in (top / "SUMMARY").read_text()
    assert "missing" in (top / "compare.txt").read_text()


@pytest.mark.parametrize("debugfs", ["/nonexistent-debugfs", None])
def test_report_with_nothing_there(tool, tmp_path, debugfs):
    out = tmp_path / "n.tar.gz"
    tool("report", "ghost", "-o", out,
         debugfs=debugfs if debugfs else tmp_path, expect=0)
    top, _ = extract(out, tmp_path)
    missing = (top / "MISSING").read_text()
    assert "debugfs" in missing and "compare" in missing
    assert "missing:" in (top / "SUMMARY").read_text()


def test_report_default_name(tool, tmp_path):
    p = tool("report", "/dev/mapper/frag", debugfs=tree("ext4-4k"), cwd=tmp_path, expect=0)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and re.match(r"dmloop-report-mapper_frag-\d{8}-\d{6}\.tar\.gz$", files[0])
    assert files[0] in p.stdout


def test_report_unwritable_output(tool, tmp_path):
    p = tool("report", "frag", "-o", tmp_path / "no" / "such" / "dir.tar.gz",
             debugfs=tree("ext4-4k"), expect=2)
    assert "tar" in p.stderr


# --------------------------------------------------------------- man page

def test_man_page_renders_without_warnings():
    page = os.path.join(TOOLS, "dmloop-inspect.8")
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-wall", "-z", page], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    if shutil.which("man"):
        p = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True,
                           env=env)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        for section in ("SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "EXAMPLES"):
            assert section in p.stdout


# ------------------------------------- captured in the VM with the real module

def guest_captures():
    """(kernel, fs, device, file, offset, instance dir) of every debugfs dump
    fixtures/capture-guest.py took from the real module in the VM; the
    filefrag outputs of the same files are in fixtures/filefrag/<kernel>/."""
    out = []
    for kernel in sorted(os.listdir(DBG)):
        if not kernel.startswith("guest-"):
            continue
        for fs in sorted(os.listdir(os.path.join(DBG, kernel))):
            top = os.path.join(DBG, kernel, fs, "dm-loop")
            for inst in sorted(os.listdir(top)):
                d = os.path.join(top, inst)
                info = dict(line.rstrip("\n").split(": ", 1) for line in open(os.path.join(d, "info")))
                name = open(os.path.join(d, "name")).read().strip()
                file = os.path.basename(info["path"]).rsplit(".", 1)[0]
                out.append(pytest.param(kernel, fs, name, file, int(info["offset"]), d,
                                        id="%s-%s" % (kernel, name)))
    return out


GUEST = guest_captures()
VARIANTS = ["", ".b512", ".e"]


def guest_ff(kernel, fs, file, variant=""):
    return os.path.join(FF, kernel, "%s-%s%s.txt" % (fs, file, variant))


def test_guest_captures_exist():
    """ext4 (4 KiB, 1 KiB blocks) and XFS, each with a contiguous and a
    fragmented file, at offset 0 and not."""
    got = {(p.values[1], p.values[3], p.values[4] > 0) for p in GUEST}
    for fs in ("ext4-4k", "ext4-1k", "xfs"):
        assert {(fs, "contig", False), (fs, "frag", False), (fs, "frag", True)} <= got, fs


@pytest.mark.parametrize("kernel,fs,dev,file,offset,d", GUEST)
def test_guest_capture_agrees(tool, kernel, fs, dev, file, offset, d):
    """The real module's table agrees with the real filefrag outputs of its
    file: in blocks, in sectors and in -e form; by device and offline."""
    root = os.path.dirname(os.path.dirname(d))
    for variant in VARIANTS:
        p = tool("compare", dev, "--no-fiemap", "--filefrag", guest_ff(kernel, fs, file, variant),
                 debugfs=root, expect=0)
        assert "verdict: agree" in p.stdout and "offset %d" % offset in p.stdout
    tool("compare", "--extents", os.path.join(d, "extents"), "--info", os.path.join(d, "info"),
         "--filefrag", guest_ff(kernel, fs, file), "--filefrag",
         guest_ff(kernel, fs, file, ".b512"), expect=0)


@pytest.mark.parametrize("kernel,fs,dev,file,offset,d",
                         [p for p in GUEST if p.values[4] == 0])
def test_guest_capture_show_matches_filefrag_b512(tool, kernel, fs, dev, file, offset, d):
    """show lists the kernel's extents in filefrag -v -b512 columns: the same
    extents filefrag found (adjacent ones merged, as dm-loop keeps them)."""
    out = tool("show", dev, debugfs=os.path.dirname(os.path.dirname(d)), expect=0).stdout
    mine = [tuple(int(x) for x in m.group(1, 3, 5)) for m in map(EXT_RE.match, out.splitlines()) if m]
    theirs = []
    for m in map(EXT_RE.match, open(guest_ff(kernel, fs, file, ".b512")).read().splitlines()):
        if not m:
            continue
        lo, ph, n = int(m.group(1)), int(m.group(3)), int(m.group(5))
        if theirs and theirs[-1][0] + theirs[-1][2] == lo and theirs[-1][1] + theirs[-1][2] == ph:
            theirs[-1] = (theirs[-1][0], theirs[-1][1], theirs[-1][2] + n)
        else:
            theirs.append((lo, ph, n))
    assert mine == theirs
    if file == "contig":
        assert len(mine) == 1
    else:
        assert len(mine) > 32


@pytest.mark.parametrize("kernel,fs,dev,file,offset,d",
                         [p for p in GUEST if p.values[3] == "frag"])
def test_guest_capture_altered_filefrag_differs(tool, tmp_path, kernel, fs, dev, file, offset, d):
    """One extent of the real filefrag -v moved 5 blocks on the disk: compare
    exits 1 and names that extent's file byte range as shifted."""
    text = open(guest_ff(kernel, fs, file)).read()
    unit = int(re.search(r"blocks? of (\d+) bytes", text).group(1))
    lines = text.splitlines(keepends=True)
    idx = [i for i, l in enumerate(lines) if EXT_RE.match(l)]
    i = idx[len(idx) * 2 // 3]
    m = EXT_RE.match(lines[i])
    lo, n = int(m.group(1)), int(m.group(5))
    lines[i] = (lines[i][:m.start(3)] + str(int(m.group(3)) + 5).rjust(m.end(3) - m.start(3)) +
                lines[i][m.end(3):m.start(4)] + str(int(m.group(4)) + 5).rjust(m.end(4) - m.start(4)) +
                lines[i][m.end(4):])
    altered = tmp_path / "altered.txt"
    altered.write_text("".join(lines))
    p = tool("compare", "--json", dev, "--no-fiemap", "--filefrag", altered,
             debugfs=os.path.dirname(os.path.dirname(d)), expect=1)
    diffs = json.loads(p.stdout)["targets"][0]["comparisons"][0]["differences"]
    start, end = max(lo * unit, offset), (lo + n) * unit
    assert [(x["kind"], x["file_start"], x["file_end"]) for x in diffs] == [("shifted", start, end)]
    assert diffs[0]["file_host_byte"] - diffs[0]["kernel_host_byte"] == 5 * unit


# ------------------------------------- sparse files on XFS: extents v2
#
# fixtures/debugfs/xfs-sparse/ (make-debugfs.py) holds block-mode devices
# over xfs/sparse.img, whose listings (filefrag/xfs-sparse*.txt) are the
# captured xfs-prealloc ones with two ranges punched: 256 KiB written,
# 128 KiB unwritten, a 128 KiB hole, 384 KiB unwritten, a 128 KiB hole.
# The kernel's table (extents v2) says which each range is.

SPARSE = tree("xfs-sparse")
SPARSE_TABLE = [(0, 512, 4544, "written"), (512, 256, 5056, "unwritten"), (768, 256, 0, "hole"),
                (1024, 768, 5568, "unwritten"), (1792, 256, 0, "hole")]
V2_AGREE = [
    ("xsparse", ["xfs-sparse.txt", "xfs-sparse.b512.txt"], 0),
    ("xsparse-off", ["xfs-sparse.txt", "xfs-sparse.b512.txt"], 131072),
    # every range written since: still v2, reason "-"
    ("xwritten", ["xfs-frag.txt", "xfs-frag.b512.txt", "xfs-frag.e.txt"], 0),
]


def test_v2_fixture_is_the_sparse_table():
    assert read_extents(os.path.join(instance_dir(SPARSE, 0, 0, 1), "extents")) == \
        ("7:2", SPARSE_TABLE)


@pytest.mark.parametrize("dev,files,offset", V2_AGREE, ids=[a[0] for a in V2_AGREE])
def test_v2_compare_agrees(tool, dev, files, offset):
    for name in files:
        p = tool("compare", dev, "--no-fiemap", "--filefrag", ff(name), debugfs=SPARSE, expect=0)
        assert "verdict: agree" in p.stdout and "offset %d" % offset in p.stdout
        assert "block mode" in p.stdout
    if dev != "xwritten":
        assert "block mode (holes:2/unwritten:2)" in p.stdout
        assert "v2: 1 written, 2 unwritten, 2 holes" in p.stdout
    doc = json.loads(tool("compare", "--json", dev, "--no-fiemap", "--filefrag", ff(files[0]),
                          debugfs=SPARSE, expect=0).stdout)
    t = doc["targets"][0]
    assert doc["verdict"] == "agree" and t["extents_version"] == 2
    assert sum(t["kernel_states"].values()) == t["kernel_extents"]


def test_v2_offline_compare_agrees(tool):
    d = instance_dir(SPARSE, 0, 0, 1)
    tool("compare", "--extents", os.path.join(d, "extents"), "--info", os.path.join(d, "info"),
         "--filefrag", ff("xfs-sparse.txt"), "--filefrag", ff("xfs-sparse.b512.txt"), expect=0)
    tool("compare", "--extents", os.path.join(d, "extents"), "--sectors", 2048,
         "--filefrag", ff("xfs-sparse.b512.txt"), expect=0)
    # The same table placed at another offset of the file is not the file.
    tool("compare", "--extents", os.path.join(instance_dir(SPARSE, 1, 0, 2), "extents"),
         "--sectors", 1792, "--filefrag", ff("xfs-sparse.txt"), expect=1)


def sparse_root(tmp_path, table):
    root = tmp_path / "dbg"
    make_instance(root, 0, 0, 1, "xsparse", "/mnt/dmloop-fixtures/xfs/sparse.img", "7:2", 0,
                  2048, table, reason="holes:2/unwritten:2")
    return root


def with_entry(i, *entry):
    t = list(SPARSE_TABLE)
    t[i] = entry
    return t


# name: (kernel table, file listing, [(kind, file_start, file_end, kernel_state,
#        file_state)], words of the note)
V2_DIFFER = {
    "unwritten_over_written": (
        with_entry(0, 0, 512, 4544, "unwritten"), "xfs-sparse.txt",
        [("state", 0, 262144, "unwritten", "written")],
        "the kernel knows this range as unwritten, the file has written data there"),
    "written_over_unwritten": (
        with_entry(1, 512, 256, 5056, "written"), "xfs-sparse.b512.txt",
        [("state", 262144, 393216, "written", "unwritten")],
        "the kernel knows this range as written, the file has unwritten blocks there"),
    "hole_over_written": (
        with_entry(0, 0, 512, 0, "hole"), "xfs-sparse.txt",
        [("state", 0, 262144, "hole", "written")],
        "the kernel knows this range as a hole, the file has written data there"),
    "hole_over_unwritten": (
        with_entry(3, 1024, 768, 0, "hole"), "xfs-sparse.txt",
        [("state", 524288, 917504, "hole", "unwritten")],
        "the kernel knows this range as a hole, the file has unwritten blocks there"),
    "unwritten_over_hole": (
        with_entry(2, 768, 256, 5312, "unwritten"), "xfs-sparse.b512.txt",
        [("state", 393216, 524288, "unwritten", "hole")],
        "the kernel knows this range as unwritten, the file has no extent there"),
    "written_over_hole": (
        with_entry(4, 1792, 256, 6336, "written"), "xfs-sparse.txt",
        [("extra", 917504, 1048576, "written", "hole")],
        "the kernel maps a range where the file has no extent"),
    "unwritten_elsewhere": (
        with_entry(3, 1024, 768, 5576, "unwritten"), "xfs-sparse.txt",
        [("shifted", 524288, 917504, "unwritten", "unwritten")],
        "the kernel's unwritten blocks are 4096 bytes past the file's"),
    "written_elsewhere": (
        with_entry(0, 0, 512, 4536, "written"), "xfs-sparse.txt",
        [("shifted", 0, 262144, "written", "written")],
        "the kernel maps 4096 bytes before the file's data"),
    "gap_over_a_hole": (
        SPARSE_TABLE[:2] + SPARSE_TABLE[3:], "xfs-sparse.txt",
        [("unmapped", 393216, 524288, None, "hole")],
        "neither maps this range"),
    "gap_over_data": (
        SPARSE_TABLE[1:], "xfs-sparse.txt",
        [("missing", 0, 262144, None, "written")],
        "the kernel table does not map file data"),
}


@pytest.mark.parametrize("case", sorted(V2_DIFFER))
def test_v2_compare_differs(tool, tmp_path, case):
    table, listing, want, note = V2_DIFFER[case]
    diffs, human = differences(tool, sparse_root(tmp_path, table), "xsparse", listing)
    assert [(d["kind"], d["file_start"], d["file_end"], d["kernel_state"], d["file_state"])
            for d in diffs] == want
    assert note in human and note in diffs[0]["what"]
    kind = want[0][0]
    assert re.search(r"^\s+%s\s+%d\s+%d\s" % (kind, want[0][1], want[0][2]), human, re.M), human
    if want[0][3] == "hole":
        assert diffs[0]["kernel_host_byte"] is None
    # The same through --extents, without a debugfs tree.
    d = instance_dir(tmp_path / "dbg", 0, 0, 1)
    tool("compare", "--extents", os.path.join(d, "extents"), "--sectors", 2048,
         "--filefrag", ff(listing), expect=1)


def test_v2_unwritten_and_shared_is_unmappable(tool, tmp_path):
    """An unwritten range of a v2 table over an extent that is also shared:
    unwritten is what the kernel expects, shared is not."""
    text = open(ff("xfs-sparse.txt")).read().replace("  unwritten\n", "  unwritten,shared\n")
    assert text.count("unwritten,shared") == 1
    listing = tmp_path / "shared.txt"
    listing.write_text(text)
    diffs, human = differences(tool, sparse_root(tmp_path, SPARSE_TABLE), "xsparse", listing)
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in diffs] == \
        [("unmappable", 262144, 393216)]
    assert "extent that is shared: block mode must not" in human
    assert diffs[0]["file_flags"] == "unwritten,shared"


def test_v2_several_differences_in_one_table(tool, tmp_path):
    table = [(0, 768, 4544, "written"), (768, 1024, 0, "hole"), (1792, 256, 0, "hole")]
    diffs, _ = differences(tool, sparse_root(tmp_path, table), "xsparse", "xfs-sparse.txt")
    assert [(d["kind"], d["file_start"], d["file_end"], d["kernel_state"], d["file_state"])
            for d in diffs] == [("state", 262144, 393216, "written", "unwritten"),
                                ("state", 524288, 917504, "hole", "unwritten")]


def test_v1_table_over_unwritten_extents_is_unchanged(tool, tmp_path):
    """A v1 table knows no states: the unwritten extents under it are
    unmappable and the holes unmapped, as before extents v2."""
    root = tmp_path / "dbg"
    make_instance(root, 0, 0, 1, "old", "/x", "7:2", 0, 2048,
                  [(0, 768, 4544), (1024, 768, 5568)])
    diffs, human = differences(tool, root, "old", "xfs-sparse.txt")
    assert [(d["kind"], d["file_start"], d["file_end"]) for d in diffs] == \
        [("unmappable", 262144, 393216), ("unmapped", 393216, 524288),
         ("unmappable", 524288, 917504), ("unmapped", 917504, 1048576)]
    assert "the kernel maps an extent that is unwritten: block mode must not" in human
    assert all("kernel_state" not in d and "file_state" not in d for d in diffs)
    doc = json.loads(tool("compare", "--json", "old", "--no-fiemap", "--filefrag",
                          ff("xfs-sparse.txt"), debugfs=root, expect=1).stdout)
    assert "extents_version" not in doc["targets"][0]
    assert "kernel_states" not in doc["targets"][0]
    assert "v2" not in human


def test_v2_show(tool):
    out = tool("show", "xsparse", debugfs=SPARSE, expect=0).stdout
    assert "reason:        holes:2/unwritten:2" in out
    assert "states (extents v2): 1 written, 2 unwritten, 2 holes" in out
    assert re.search(r"^ ext: .* flags: state:$", out, re.M)
    # The written and unwritten ranges in filefrag -v -b512 columns, as
    # filefrag lists them; holes are listed with no physical range.
    mine = [m.groups()[:5] for m in map(EXT_RE.match, out.splitlines()) if m]
    theirs = [m.groups()[:5] for m in map(EXT_RE.match,
                                           open(ff("xfs-sparse.b512.txt")).read().splitlines()) if m]
    assert mine == theirs
    states = re.findall(r"^\s*\d+:.*\s(written|unwritten|hole)$", out, re.M)
    assert states == [e[3] for e in SPARSE_TABLE]
    assert re.search(r"^\s+4:\s+1792\.\.\s+2047:\s+-\s+-:\s+256:\s+last\s+hole$", out, re.M), out


def test_v2_show_json(tool):
    doc = json.loads(tool("show", "--json", "xsparse-off", debugfs=SPARSE, expect=0).stdout)
    t = doc["targets"][0]
    assert t["info"]["reason"] == "holes:2/unwritten:2" and t["extents_version"] == 2
    assert [(e["dev_sector"], e["sectors"], e["host_sector"], e["state"]) for e in t["extents"]] == \
        [(0, 256, 4800, "written"), (256, 256, 5056, "unwritten"), (512, 256, 0, "hole"),
         (768, 768, 5568, "unwritten"), (1536, 256, 0, "hole")]
    assert t["extents"][0]["file_offset"] == 131072
    # v1 tables: no state, no version.
    doc = json.loads(tool("show", "--json", "frag", debugfs=tree("ext4-4k"), expect=0).stdout)
    assert "extents_version" not in doc["targets"][0]
    assert all("state" not in e for e in doc["targets"][0]["extents"])
    out = tool("show", "frag", debugfs=tree("ext4-4k"), expect=0).stdout
    assert "state" not in out and "v2" not in out


def test_v2_report(tool, tmp_path):
    out = tmp_path / "r.tar.gz"
    tool("report", "xsparse", "-o", out, debugfs=SPARSE, expect=0)
    top, _ = extract(out, tmp_path)
    summary = (top / "SUMMARY").read_text()
    assert "mode:        block, reason holes:2/unwritten:2" in summary
    assert "states:      1 written, 2 unwritten, 2 holes (extents v2)" in summary
    extents = (top / "debugfs" / "dm-0-0-1" / "extents").read_text()
    assert extents.startswith("# dm-loop extents v2\n") and "hole\n" in extents
    assert "sparse.img: No such file" in (top / "MISSING").read_text()
    # v1: no states line.
    tool("report", "frag", "-o", tmp_path / "v1.tar.gz", debugfs=tree("ext4-4k"), expect=0)
    top, _ = extract(tmp_path / "v1.tar.gz", tmp_path / "v1")
    assert "states:" not in (top / "SUMMARY").read_text()


def table_v2(ext, sectors):
    """dm-loop's sparse table for a file, from filefrag -b512 extents."""
    out, pos = [], 0

    def add(dev, cnt, host, state):
        if out and out[-1][3] == state and out[-1][0] + out[-1][1] == dev and \
                (state == "hole" or out[-1][2] + out[-1][1] == host):
            out[-1] = (out[-1][0], out[-1][1] + cnt, out[-1][2], state)
        else:
            out.append((dev, cnt, host, state))
    for l, p, n, flags in ext:
        hi = min(l + n, sectors)
        if l >= hi:
            continue
        if l > pos:
            add(pos, l - pos, 0, "hole")
        add(l, hi - l, p, "unwritten" if "unwritten" in flags else "written")
        pos = hi
    if pos < sectors:
        add(pos, sectors - pos, 0, "hole")
    return out


@pytest.fixture
def live_sparse(tmp_path):
    """A real 1 MiB file: preallocated, 256 KiB written, 128 KiB punched at
    384 KiB; and a debugfs tree whose dm-9 maps it with its v2 table."""
    img = tmp_path / "sparse"
    with open(img, "wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, 1 << 20)
        except OSError as e:
            pytest.skip("fallocate: %s" % e)
        f.write(os.urandom(256 << 10))
        f.flush()
        os.fsync(f.fileno())
    if shutil.which("fallocate") is None or subprocess.run(
            ["fallocate", "--punch-hole", "-o", str(384 << 10), "-l", str(128 << 10), str(img)],
            capture_output=True).returncode:
        pytest.skip("cannot punch a hole here")
    ext = filefrag_b512(img)
    if not any("unwritten" in e[3] for e in ext) or sum(e[2] for e in ext) >= 2048:
        pytest.skip("this file system does not report unwritten extents and holes")
    if any("unknown" in e[3] or "delalloc" in e[3] for e in ext):
        pytest.skip("file system reports unknown/delalloc extents after fsync")
    table = table_v2(ext, 2048)
    assert {e[3] for e in table} == {"written", "unwritten", "hole"}
    root = tmp_path / "dbg"
    holes = sum(1 for e in table if e[3] == "hole")
    unwritten = sum(1 for e in table if e[3] == "unwritten")
    make_instance(root, 9, 0, 1, "sp", str(img), devno(img), 0, 2048, table,
                  reason="holes:%d/unwritten:%d" % (holes, unwritten))
    return {"img": img, "root": root, "ext": ext, "table": table}


def test_v2_fiemap(tool, live_sparse, tmp_path):
    """The v2 table of a real sparse file agrees with FIEMAP; a hole of the
    file that the table calls unwritten does not; a v1 table of the same
    blocks does not either."""
    img, root, table = live_sparse["img"], live_sparse["root"], live_sparse["table"]
    p = tool("compare", "sp", debugfs=root, expect=0)
    assert "fiemap %s" % img in p.stdout and "verdict: agree" in p.stdout
    i = [k for k, e in enumerate(table) if e[3] == "hole" and e[0] == 768][0]
    bad = list(table)
    bad[i] = (bad[i][0], bad[i][1], table[i - 1][2] + table[i - 1][1], "unwritten")
    write_extents(os.path.join(instance_dir(root, 9, 0, 1), "extents"), devno(img), bad)
    diffs = json.loads(tool("compare", "--json", "sp", debugfs=root, expect=1).stdout)[
        "targets"][0]["comparisons"][0]["differences"]
    assert [(d["kind"], d["file_start"], d["file_end"], d["kernel_state"]) for d in diffs] == \
        [("state", 393216, 524288, "unwritten")]
    # v1: the unwritten extents are unmappable, as they always were.
    root1 = tmp_path / "dbg1"
    make_instance(root1, 9, 0, 1, "sp", str(img), devno(img), 0, 2048, merged(live_sparse["ext"]))
    diffs = json.loads(tool("compare", "--json", "sp", debugfs=root1, expect=1).stdout)[
        "targets"][0]["comparisons"][0]["differences"]
    assert {d["kind"] for d in diffs} == {"unmappable", "unmapped"}


def test_v2_report_live(tool, live_sparse, tmp_path):
    out = tmp_path / "sp.tar.gz"
    tool("report", "sp", "-o", out, debugfs=live_sparse["root"], expect=0)
    top, _ = extract(out, tmp_path)
    summary = (top / "SUMMARY").read_text()
    assert "comparison:  agree" in summary and "states:      1 written, 2 unwritten" in summary
    compare = (top / "compare.txt").read_text()
    assert "(v2: 1 written, 2 unwritten, 1 hole)" in compare and "verdict: agree" in compare
    doc = json.loads((top / "compare.json").read_text())
    assert doc["verdict"] == "agree"
    assert doc["targets"][0]["kernel_states"] == {"written": 1, "unwritten": 2, "hole": 1}
    assert "unwritten" in (top / "file" / "filefrag-v").read_text()
