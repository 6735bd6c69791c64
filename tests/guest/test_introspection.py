"""dm-loop shows its own state: debugfs extent tables and figures, sysfs
module-wide figures, `dmsetup status` and `dmsetup message`.

Every debugfs file is read through the strict parsers of introspect_util,
which check the formats documented in module/dm-loop.rst; the documented
key and header lists are read from the rst itself.
"""

import json
import mmap
import os
import re
import subprocess
import sys

import pytest

import dmloop
import introspect_util as iu

MiB = 1 << 20
NOBODY = 65534
EACCES = 13

# Scratch disks: 0 holds the filesystems whose layouts are compared with
# FIEMAP (one per type, module-scoped), 1 the ext4 filesystem the other
# tests share.
MKFS_ARGS = {"ext4": ("-b", "4096", "-m", "0"), "xfs": ()}


def table_line(path, sectors, offset=0, start=0, opts=""):
    return "%d %d loop %s %d%s" % (start, sectors, path, offset, opts)


def only_instance(name):
    insts = iu.instances(iu.dm_minor(name))
    assert len(insts) == 1, "want one debugfs directory for %s: %s" % (name, insts)
    return insts[0]


def status_fields(name):
    """`dmsetup status` of a one-target device, as the documented fields."""
    f = dmloop.status(name).split()
    assert len(f) == 10 and f[2] == "loop", "status: %r" % f
    return dict(zip(("mode", "extents", "reads", "writes", "flushes", "splits", "reason"), f[3:]))


def counters(info):
    return {k: int(info[k]) for k in ("reads", "writes", "flushes", "splits")}


def write_file(path, size, seed):
    dmloop.write_random(path, size, seed=seed, fsync=True)


@pytest.fixture(scope="module")
def ext4fs():
    """An ext4 filesystem (4 KiB blocks) on scratch disk 1 for the whole file."""
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(1), mkfs_args=MKFS_ARGS["ext4"]) as mp:
        yield mp


@pytest.fixture(scope="module")
def fragmented(ext4fs):
    """A 64-block file on ext4fs scattered over single free blocks."""
    blk = os.statvfs(ext4fs).f_bsize
    path = ext4fs / "fragmented"
    dmloop.write_fragmented(ext4fs, path, dmloop.random_bytes(64 * blk, 7), blk)
    assert len(iu.fiemap(path)) > 16, "file should be scattered: %s" % iu.fiemap(path)
    return path


@pytest.fixture(scope="module", params=["ext4", "xfs"])
def layouts(request):
    """One filesystem per type on scratch disk 0 with two files: `contiguous`
    (written first, on an empty filesystem) and `fragmented` (written over
    single free blocks)."""
    fstype = request.param
    with dmloop.mounted_fs(fstype, dev=dmloop.scratch_disk(0), mkfs_args=MKFS_ARGS[fstype]) as mp:
        blk = os.statvfs(mp).f_bsize
        files = {"contiguous": mp / "contiguous", "fragmented": mp / "fragmented"}
        write_file(files["contiguous"], 8 * MiB, 1)
        dmloop.write_fragmented(mp, files["fragmented"], dmloop.random_bytes(128 * blk, 2), blk)
        yield files, blk


# ------------------------------------------------------------ extents

@pytest.mark.parametrize("layout", ["contiguous", "fragmented"])
@pytest.mark.parametrize("offset_blocks,tail", [(0, 0), (5, 3)],
                         ids=["whole", "offset5blk-tail3"])
def test_extents_equal_fiemap(layouts, layout, offset_blocks, tail):
    """The debugfs extent table is the file's FIEMAP in host sectors, shifted
    by the offset, clipped to the device (which may end inside a block) and
    with contiguous runs merged; the header names the host device."""
    files, blk = layouts
    img = files[layout]
    offset = offset_blocks * blk
    sectors = (img.stat().st_size - offset) // 512 - tail
    want = iu.expected_extents(iu.fiemap(img), offset, sectors)
    if layout == "fragmented":
        assert len(want) > 32, "file should be scattered: %d extents" % len(want)
    dmloop.create("fm", table_line(img, sectors, offset))
    try:
        assert status_fields("fm")["mode"] == "block"
        table = iu.extents_of(only_instance("fm"))
    finally:
        dmloop.remove("fm")
    st = img.stat()
    assert table.host == (os.major(st.st_dev), os.minor(st.st_dev))
    assert table.extents == want
    assert sum(e.sectors for e in table.extents) == sectors


def test_formats_are_the_documented_ones(ext4fs):
    """The files of a real instance have exactly the documented names, the
    `extents` header lines and the `info` keys (in order) that
    module/dm-loop.rst shows, and sysfs has exactly the documented figures."""
    img = ext4fs / "documented"
    write_file(img, 4 * MiB, 3)
    dmloop.create("doc", table_line(img, 8192))
    try:
        inst = only_instance("doc")
        assert sorted(os.listdir(inst.path)) == sorted(iu.INSTANCE_FILES)
        headers = [line for line in iu.read(inst.path / "extents").splitlines()
                   if line.startswith("#")]
        documented = iu.documented_extents_headers()
        assert len(headers) == len(documented)
        for have, doc in zip(headers, documented):
            pattern = r"\d+".join(re.escape(part) for part in re.split(r"<[^>]*>", doc))
            assert re.fullmatch(pattern, have), "%r does not match documented %r" % (have, doc)
        assert list(iu.info_of(inst)) == iu.documented_info_keys()
    finally:
        dmloop.remove("doc")
    # The read-only ones; the writable ones are settings (bmap_walk: see
    # "Reading the layout" in dm-loop.rst).
    figures = [p.name for p in iu.PARAMS.iterdir() if not p.stat().st_mode & 0o222]
    assert sorted(figures) == sorted(iu.documented_sysfs_figures())


# ------------------------------------------------------------ info

def test_info_block_mode(ext4fs):
    """`info` of a block-mode device: every documented key, with the file's
    inode, device and block size, the table's size and no I/O counted yet."""
    img = ext4fs / "info"
    write_file(img, 8 * MiB, 4)
    blk = os.statvfs(ext4fs).f_bsize
    sectors = (8 * MiB - 2 * blk) // 512 - 1
    dmloop.create("inf", table_line(img, sectors, 2 * blk))
    try:
        inst = only_instance("inf")
        info = iu.info_of(inst)
        nr_lines = len(iu.read(inst.path / "extents").splitlines()) - 3
        table = iu.extents_of(inst)
    finally:
        dmloop.remove("inf")
    st = img.stat()
    assert list(info) == iu.documented_info_keys()
    assert info["version"] == iu.read("/sys/module/dm_loop/version").strip()
    assert info["mode"] == "block"
    assert info["reason"] == "-"
    assert info["path"] == str(img)
    assert int(info["inode"]) == st.st_ino
    assert info["host_dev"] == "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    assert int(info["offset"]) == 2 * blk
    assert int(info["fs_block_size"]) == blk
    assert int(info["dev_sectors"]) == sectors
    assert int(info["extents"]) == nr_lines == len(table.extents) >= 1
    assert sum(e.sectors for e in table.extents) == sectors
    assert int(info["table_bytes"]) == iu.EXTENT_BYTES * nr_lines
    assert int(info["setup_ns"]) > 0
    for key in ("reads", "writes", "flushes", "splits", "direct_ios", "buffered_ios",
                "discards", "errors"):
        assert info[key] == "0", "%s counted without I/O: %s" % (key, info)
    assert info["read_only"] == "0"


def test_info_read_only_table(ext4fs):
    """A read-only table says so in `info`."""
    img = ext4fs / "info-ro"
    write_file(img, MiB, 5)
    dmloop.create("inro", table_line(img, 2048), readonly=True)
    try:
        info = iu.info_of(only_instance("inro"))
    finally:
        dmloop.remove("inro")
    assert info["read_only"] == "1"
    assert info["mode"] == "block"


@pytest.mark.parametrize("opts,counter", [(" 1 force_file", "direct_ios"),
                                          (" 2 force_file no_direct_io", "buffered_ios")],
                         ids=["direct", "buffered"])
def test_info_file_mode(ext4fs, opts, counter):
    """A file-mode device shows its mode and reason, an empty extent table
    (headers only), and counts direct and buffered I/O apart."""
    img = ext4fs / "filemode"
    write_file(img, MiB, 6)
    dmloop.create("fmode", table_line(img, 2048, opts=opts))
    try:
        inst = only_instance("fmode")
        table = iu.extents_of(inst)
        assert dmloop.read_bytes("/dev/mapper/fmode", 4096, direct=True) == \
            dmloop.random_bytes(4096, 6)
        info = iu.info_of(inst)
        fields = status_fields("fmode")
    finally:
        dmloop.remove("fmode")
    st = img.stat()
    assert table.host == (os.major(st.st_dev), os.minor(st.st_dev))
    assert table.extents == []
    assert (info["mode"], info["reason"]) == ("file", "forced")
    assert (info["extents"], info["table_bytes"]) == ("0", "0")
    assert info["reads"] == "1"
    assert info[counter] == "1"
    other = "buffered_ios" if counter == "direct_ios" else "direct_ios"
    assert info[other] == "0"
    assert fields == {"mode": "file", "extents": "0", "reads": "1", "writes": "0",
                      "flushes": "0", "splits": "0", "reason": "forced"}


# ------------------------------------------------------------ instances

def test_reload_keeps_both_instances_until_old_table_destroyed(ext4fs):
    """A loaded, not yet resumed table has its own directory next to the live
    one (same dm-<minor>-<start>, the live one with the smaller id); resume
    destroys the old table and its directory, `dmsetup clear` the new one's."""
    img = ext4fs / "reload"
    write_file(img, 4 * MiB, 8)
    blk = os.statvfs(ext4fs).f_bsize
    dmloop.create("rl", table_line(img, 4096))
    try:
        minor = iu.dm_minor("rl")
        [first] = iu.instances(minor)

        dmloop.reload("rl", table_line(img, 4096, blk))
        live, loaded = iu.instances(minor)
        assert (live.minor, live.start) == (loaded.minor, loaded.start) == (minor, 0)
        assert live == first and loaded.id > live.id
        assert iu.info_of(live)["offset"] == "0"
        assert iu.info_of(loaded)["offset"] == str(blk)

        dmloop.resume("rl")
        assert iu.instances(minor) == [loaded]
        assert iu.info_of(loaded)["offset"] == str(blk)

        dmloop.reload("rl", table_line(img, 4096, 2 * blk))
        assert len(iu.instances(minor)) == 2
        dmloop.dmsetup("clear", "rl")
        assert iu.instances(minor) == [loaded]
    finally:
        dmloop.remove("rl")
    assert iu.instances(minor) == []


def test_rename_keeps_directory_and_shows_new_name(ext4fs):
    """`dmsetup rename` leaves the directory where it is; its `name` file
    shows the new name at once and `dev` the unchanged device number."""
    img = ext4fs / "rename"
    write_file(img, MiB, 9)
    dmloop.create("rn0", table_line(img, 2048))
    name = "rn0"
    try:
        inst = only_instance("rn0")
        rdev = os.stat("/dev/mapper/rn0").st_rdev
        assert iu.read(inst.path / "name") == "rn0\n"
        assert iu.read(inst.path / "dev") == "%d:%d\n" % (os.major(rdev), os.minor(rdev))
        assert inst.minor == os.minor(rdev)

        dmloop.dmsetup("rename", "rn0", "renamed-rn1")
        name = "renamed-rn1"
        dmloop.created_devices[dmloop.created_devices.index("rn0")] = name
        assert iu.instances(inst.minor) == [inst]
        assert iu.read(inst.path / "name") == "renamed-rn1\n"
        assert iu.read(inst.path / "dev") == "%d:%d\n" % (os.major(rdev), os.minor(rdev))
    finally:
        dmloop.remove(name)


def test_multi_segment_table_has_a_directory_per_target(ext4fs):
    """Two loop targets in one table (two ranges of one file, with a zero
    target between them) get a directory each, named by their start sector,
    each with its own range; `dmsetup message` at a target's sector reaches
    that target; removing the device removes both directories."""
    img = ext4fs / "segments"
    write_file(img, 4 * MiB, 10)
    second = 2048 + 64
    table = "\n".join([table_line(img, 2048, 0), "2048 64 zero",
                       table_line(img, 1024, 3 * MiB, start=second)])
    dmloop.create("seg", table)
    try:
        minor = iu.dm_minor("seg")
        a, b = iu.instances(minor)
        assert (a.start, b.start) == (0, second)
        ia, ib = iu.info_of(a), iu.info_of(b)
        assert (ia["offset"], ia["dev_sectors"]) == ("0", "2048")
        assert (ib["offset"], ib["dev_sectors"]) == (str(3 * MiB), "1024")
        assert iu.read(a.path / "name") == iu.read(b.path / "name") == "seg\n"
        ea, eb = iu.extents_of(a).extents, iu.extents_of(b).extents
        assert sum(e.sectors for e in ea) == 2048 and sum(e.sectors for e in eb) == 1024
        assert iu.parse_info(dmloop.message("seg", "info", sector=second) + "\n")["offset"] == \
            str(3 * MiB)
        assert iu.parse_info(dmloop.message("seg", "info", sector=0) + "\n")["offset"] == "0"
    finally:
        dmloop.remove("seg")
    assert iu.instances(minor) == []


# ------------------------------------------------------------ sysfs figures

def assert_figures_match_debugfs():
    figures = iu.sysfs_figures()
    infos = [iu.info_of(i) for i in iu.instances()]
    assert figures["block_devices"] == sum(i["mode"] == "block" for i in infos)
    assert figures["file_devices"] == sum(i["mode"] == "file" for i in infos)
    assert figures["total_extents"] == sum(int(i["extents"]) for i in infos)
    assert figures["table_bytes"] == sum(int(i["table_bytes"]) for i in infos)
    assert figures["table_bytes"] == iu.EXTENT_BYTES * figures["total_extents"]
    return figures


def test_sysfs_figures_follow_devices(ext4fs, fragmented):
    """The module-wide figures rise when block- and file-mode devices come,
    fall when they go, and always equal the sums over debugfs."""
    plain = ext4fs / "sysfs-file"
    write_file(plain, MiB, 11)
    base = assert_figures_match_debugfs()
    nr = len(iu.fiemap(fragmented))

    dmloop.create("sfb", table_line(fragmented, fragmented.stat().st_size // 512))
    try:
        f = assert_figures_match_debugfs()
        assert f["block_devices"] == base["block_devices"] + 1
        assert f["total_extents"] >= base["total_extents"] + nr
        dmloop.create("sff", table_line(plain, 2048, opts=" 1 force_file"))
        f = assert_figures_match_debugfs()
        assert f["file_devices"] == base["file_devices"] + 1
        assert f["block_devices"] == base["block_devices"] + 1
    finally:
        dmloop.remove("sfb")
    try:
        f = assert_figures_match_debugfs()
        assert (f["block_devices"], f["total_extents"]) == \
            (base["block_devices"], base["total_extents"])
        assert f["file_devices"] == base["file_devices"] + 1
    finally:
        dmloop.remove("sff")
    assert assert_figures_match_debugfs() == base


# ------------------------------------------------------------ counters and messages

def test_counters_count_reads_writes_flushes_splits(fragmented):
    """After known O_DIRECT I/O, the counters in `info` and `dmsetup status`
    are exact: a read across an extent end counts as two reads and a split,
    an fsync of the device as one flush."""
    sectors = fragmented.stat().st_size // 512
    dmloop.create("ctr", table_line(fragmented, sectors))
    try:
        inst = only_instance("ctr")
        extents = iu.extents_of(inst).extents
        assert len(extents) > 1
        boundary = extents[0].sectors * 512
        dmloop.message("ctr", "reset_counters")
        fd = os.open("/dev/mapper/ctr", os.O_RDWR | os.O_DIRECT)
        buf = mmap.mmap(-1, 8192)
        try:
            assert os.preadv(fd, [memoryview(buf)[:4096]], 0) == 4096
            assert os.preadv(fd, [buf], boundary - 4096) == 8192
            assert buf[:] == dmloop.random_bytes(64 * 4096, 7)[boundary - 4096:boundary + 4096]
            assert os.pwritev(fd, [memoryview(buf)[:4096]], boundary) == 4096
            os.fsync(fd)
        finally:
            buf.close()
            os.close(fd)
        info = iu.info_of(inst)
        fields = status_fields("ctr")
    finally:
        dmloop.remove("ctr")
    assert counters(info) == {"reads": 3, "writes": 1, "flushes": 1, "splits": 1}
    assert fields == {"mode": "block", "extents": info["extents"], "reads": "3",
                      "writes": "1", "flushes": "1", "splits": "1", "reason": "-"}


def test_reset_counters_zeroes_them(ext4fs):
    """`dmsetup message <dev> 0 reset_counters` zeroes every I/O counter,
    which counts again afterwards."""
    img = ext4fs / "reset"
    write_file(img, MiB, 12)
    dmloop.create("rst", table_line(img, 2048))
    try:
        inst = only_instance("rst")
        dmloop.write_random("/dev/mapper/rst", 64 * 1024, seed=13, direct=True, fsync=True)
        dmloop.read_bytes("/dev/mapper/rst", 64 * 1024, direct=True)
        before = iu.info_of(inst)
        assert counters(before)["reads"] > 0 and counters(before)["writes"] > 0
        assert counters(before)["flushes"] > 0
        assert dmloop.message("rst", "reset_counters") == ""
        after = iu.info_of(inst)
        fields = status_fields("rst")
        dmloop.read_bytes("/dev/mapper/rst", 4096, direct=True)
        again = iu.info_of(inst)
    finally:
        dmloop.remove("rst")
    assert counters(after) == {"reads": 0, "writes": 0, "flushes": 0, "splits": 0}
    for key in ("direct_ios", "buffered_ios", "discards", "errors"):
        assert after[key] == "0"
    assert (fields["reads"], fields["writes"], fields["flushes"], fields["splits"]) == \
        ("0", "0", "0", "0")
    assert counters(again)["reads"] == 1
    # Everything else in info is untouched.
    for key in ("mode", "path", "inode", "extents", "table_bytes", "setup_ns"):
        assert after[key] == before[key]


def test_message_info_returns_info_text(ext4fs):
    """`dmsetup message <dev> 0 info` returns the debugfs `info` text."""
    img = ext4fs / "msginfo"
    write_file(img, MiB, 14)
    dmloop.create("mi", table_line(img, 2048, opts=" 1 no_direct_io"))
    try:
        reply = dmloop.message("mi", "info")
        text = iu.read(only_instance("mi").path / "info")
    finally:
        dmloop.remove("mi")
    assert reply + "\n" == text
    assert list(iu.parse_info(reply + "\n")) == iu.documented_info_keys()


@pytest.mark.parametrize("msg", [("bogus",), ("info", "extra"), ("reset_counters", "now"),
                                 ("reset",)], ids=lambda m: "-".join(m))
def test_unknown_messages_refused(ext4fs, msg):
    """A message that is not exactly one known command fails with EINVAL and
    changes nothing."""
    img = ext4fs / "msgbad"
    write_file(img, MiB, 15)
    dmloop.create("mb", table_line(img, 2048))
    try:
        dmloop.read_bytes("/dev/mapper/mb", 4096, direct=True)
        p = dmloop.dmsetup("message", "mb", 0, *msg, check=False)
        reads = status_fields("mb")["reads"]
    finally:
        dmloop.remove("mb")
    assert p.returncode != 0
    assert "Invalid argument" in p.stderr
    assert reads == "1"


# ------------------------------------------------------------ permissions

PROBE = r"""
import json, os, sys
out = {}
for path in sys.argv[1:]:
    r = {}
    try:
        with open(path) as f:
            r["text"] = f.read()
    except OSError as e:
        r["read_errno"] = e.errno
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        r["open_write_errno"] = e.errno
    else:
        try:
            os.write(fd, b"0\n")
            r["wrote"] = True
        except OSError as e:
            r["write_errno"] = e.errno
        os.close(fd)
    out[path] = r
print(json.dumps(out))
"""


def probe(paths, nobody):
    """Try to read and to write each path, as root or as nobody (uid and gid
    65534, no supplementary groups, no capabilities); {path: results}."""
    kw = dict(user=NOBODY, group=NOBODY, extra_groups=[]) if nobody else {}
    p = subprocess.run([sys.executable, "-c", PROBE] + [str(x) for x in paths],
                       capture_output=True, text=True, check=True, **kw)
    return json.loads(p.stdout)


@pytest.fixture
def instance(ext4fs):
    """A block-mode device with its debugfs directory."""
    img = ext4fs / "perm"
    write_file(img, MiB, 16)
    dmloop.create("perm", table_line(img, 2048))
    yield only_instance("perm")
    dmloop.remove("perm")


def debugfs_mode():
    return os.stat(iu.DEBUGFS_MOUNT).st_mode & 0o7777


def test_debugfs_closed_to_non_root_by_default(instance):
    """debugfs as mounted by default (0700) keeps every dm-loop file from
    other users: reading and writing are both denied."""
    if debugfs_mode() != 0o700:
        pytest.skip("debugfs is mounted with mode %o, not the default 0700" % debugfs_mode())
    files = [instance.path / f for f in iu.INSTANCE_FILES]
    for path, r in probe(files, nobody=True).items():
        assert r.get("read_errno") == EACCES, "%s: %s" % (path, r)
        assert r.get("open_write_errno") == EACCES, "%s: %s" % (path, r)


def test_debugfs_files_read_only_for_non_root(instance):
    """With debugfs opened up (mode=0755), any user reads every dm-loop
    file (0444) and sees what root sees, and none may open one for writing."""
    files = [instance.path / f for f in iu.INSTANCE_FILES]
    for f in files:
        assert os.stat(f).st_mode & 0o7777 == 0o444, f
    old = debugfs_mode()
    dmloop.run(["mount", "-o", "remount,mode=0755", str(iu.DEBUGFS_MOUNT)])
    try:
        as_nobody = probe(files, nobody=True)
    finally:
        dmloop.run(["mount", "-o", "remount,mode=%o" % old, str(iu.DEBUGFS_MOUNT)])
    as_root = probe(files, nobody=False)
    for path, r in as_nobody.items():
        assert "text" in r, "%s: %s" % (path, r)
        assert r["text"] == as_root[path]["text"], path
        assert r.get("open_write_errno") == EACCES, "%s: %s" % (path, r)


def test_debugfs_files_not_writable_by_root(instance):
    """Not even root can write a dm-loop debugfs file: the write fails and
    the file reads the same afterwards."""
    files = [instance.path / f for f in iu.INSTANCE_FILES]
    before = {str(f): iu.read(f) for f in files}
    for path, r in probe(files, nobody=False).items():
        assert "wrote" not in r, "%s: %s" % (path, r)
        assert "write_errno" in r or "open_write_errno" in r, "%s: %s" % (path, r)
    assert {str(f): iu.read(f) for f in files} == before


def test_sysfs_figures_world_readable_never_writable(instance):
    """The sysfs figures are 0444: anyone reads them, and nobody, root
    included, can open one for writing."""
    files = [iu.PARAMS / k for k in iu.SYSFS_FIGURES]
    for f in files:
        assert os.stat(f).st_mode & 0o7777 == 0o444, f
    for nobody in (True, False):
        for path, r in probe(files, nobody=nobody).items():
            assert re.fullmatch(r"\d+\n", r.get("text", "")), "%s: %s" % (path, r)
            assert r.get("open_write_errno") == EACCES, "%s: %s" % (path, r)
