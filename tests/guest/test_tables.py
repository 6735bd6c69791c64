"""The table line: what is accepted, what is refused and how, and what
dmsetup prints back.

Every bad table is refused with its own `ti->error` (checked on the exact
`device-mapper: table: <dev>: loop: <message> (-E...)` kernel log line) and
leaves nothing behind.  Optional arguments, read-only tables, `dmsetup
table/status` output, IMA measurement and dmsetup's losetup personality
(dmlosetup) work as module/dm-loop.rst says.  Data round trips per
filesystem are in test_block_data.py.
"""

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import dmloop
from safety_util import (
    UNMAPPED_MSG, MiB, assert_nothing_left, assert_refused, is_pinned, status_fields, table,
    table_error_re, target_info, write_file)

SIZE = MiB                      # the backing file of the bad-table cases
SECTORS = SIZE // 512


@pytest.fixture(scope="module")
def files():
    """ext4 on the first scratch disk with a 1 MiB file, a directory and a fifo."""
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(0)) as mp:
        write_file(mp / "img", SIZE, seed=1)
        os.mkdir(mp / "dir")
        os.mkfifo(mp / "fifo")
        yield mp


@pytest.fixture(scope="module")
def _remountable_fs():
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(1)) as mp:
        yield mp


@pytest.fixture
def remountable(_remountable_fs):
    """ext4 on the second scratch disk, for tests that remount it read-only:
    read-write again after each test."""
    yield _remountable_fs
    _remount(_remountable_fs, "rw")


@contextlib.contextmanager
def chattr(path, flag):
    """The file with inode flag `flag` (i: immutable, a: append-only) set."""
    dmloop.run(["chattr", "+" + flag, str(path)])
    try:
        yield path
    finally:
        dmloop.run(["chattr", "-" + flag, str(path)])


def _remount(mp, mode):
    return dmloop.run(["mount", "-o", "remount," + mode, str(mp)], check=False)


def _fill(template, mp):
    return template.format(img=mp / "img", mp=mp, disk=dmloop.scratch_disk(0),
                           size=SIZE, sectors=SECTORS)


# (id, table, ti->error, errno name); `who` None: refused by dm core before
# the target sees it.
BAD_TABLES = [
    ("no_args", "0 8 loop", "Invalid argument count: need <file path> <offset>", "EINVAL"),
    ("path_only", "0 8 loop {img}", "Invalid argument count: need <file path> <offset>", "EINVAL"),
    ("extra_junk", "0 8 loop {img} 0 junk", "Invalid number of optional arguments", "EINVAL"),
    ("junk_after_opts", "0 8 loop {img} 0 1 force_file junk",
     "Unexpected arguments after the optional arguments", "EINVAL"),
    ("relative_path", "0 8 loop img 0", "File path must be absolute", "EINVAL"),
    ("nonexistent", "0 8 loop {mp}/nonexistent 0", "File does not exist", "ENOENT"),
    ("directory", "0 8 loop {mp}/dir 0", "File is a directory", "EINVAL"),
    ("block_device", "0 8 loop {disk} 0", "Not a regular file", "EINVAL"),
    ("char_device", "0 8 loop /dev/null 0", "Not a regular file", "EINVAL"),
    ("fifo", "0 8 loop {mp}/fifo 0", "Not a regular file", "EINVAL"),
    ("offset_unaligned", "0 8 loop {img} 100", "Offset not a multiple of 512 bytes", "EINVAL"),
    ("offset_at_size", "0 8 loop {img} {size}", "Offset beyond end of file", "EINVAL"),
    ("offset_past_size", "0 8 loop {img} 2097152", "Offset beyond end of file", "EINVAL"),
    ("offset_negative", "0 8 loop {img} -1", "Invalid offset", "EINVAL"),
    ("offset_2_64", "0 8 loop {img} 18446744073709551616", "Invalid offset", "EINVAL"),
    ("offset_2_63", "0 8 loop {img} 9223372036854775808", "Invalid offset", "EINVAL"),
    ("offset_junk", "0 8 loop {img} 512k", "Invalid offset", "EINVAL"),
    ("length_past_eof", "0 2049 loop {img} 0", "Device length reaches past end of file",
     "EINVAL"),
    ("length_past_eof_offset", "0 {sectors} loop {img} 512",
     "Device length reaches past end of file", "EINVAL"),
    ("opt_unknown", "0 8 loop {img} 0 1 frobnicate", "Unrecognised optional argument", "EINVAL"),
    ("opt_duplicate", "0 8 loop {img} 0 2 force_file force_file", "Duplicate optional argument",
     "EINVAL"),
    ("opt_duplicate_other_case", "0 8 loop {img} 0 2 no_direct_io NO_DIRECT_IO",
     "Duplicate optional argument", "EINVAL"),
    ("opt_conflict", "0 8 loop {img} 0 2 require_block force_file",
     "require_block and force_file are mutually exclusive", "EINVAL"),
    ("opt_count_short", "0 8 loop {img} 0 2 require_block",
     "Invalid number of optional arguments", "EINVAL"),
    ("opt_count_alone", "0 8 loop {img} 0 1", "Invalid number of optional arguments", "EINVAL"),
    ("opt_count_too_big", "0 8 loop {img} 0 6 a b c d e f",
     "Invalid number of optional arguments", "EINVAL"),
    ("workers_no_count", "0 8 loop {img} 0 1 workers", "workers needs a count", "EINVAL"),
    ("workers_count_outside_opts", "0 8 loop {img} 0 1 workers 4", "workers needs a count",
     "EINVAL"),
    ("workers_zero", "0 8 loop {img} 0 2 workers 0", "Invalid number of workers: 1 to 64",
     "EINVAL"),
    ("workers_too_many", "0 8 loop {img} 0 2 workers 65", "Invalid number of workers: 1 to 64",
     "EINVAL"),
    ("workers_negative", "0 8 loop {img} 0 2 workers -1", "Invalid number of workers: 1 to 64",
     "EINVAL"),
    ("workers_2_32_plus_4", "0 8 loop {img} 0 2 workers 4294967300",
     "Invalid number of workers: 1 to 64", "EINVAL"),
    ("workers_junk", "0 8 loop {img} 0 2 workers 4x", "Invalid number of workers: 1 to 64",
     "EINVAL"),
    ("workers_not_a_number", "0 8 loop {img} 0 2 workers force_file",
     "Invalid number of workers: 1 to 64", "EINVAL"),
    ("workers_duplicate", "0 8 loop {img} 0 4 workers 2 WORKERS 3",
     "Duplicate optional argument", "EINVAL"),
    ("opt_count_negative", "0 8 loop {img} 0 -1", "Invalid number of optional arguments",
     "EINVAL"),
]

# Lengths dm core itself refuses before any constructor runs.
BAD_LENGTHS = [
    ("length_2_64", "0 18446744073709551616 loop {img} 0", "too large device"),
    ("length_negative", "0 -1 loop {img} 0", "too large device"),
    ("length_2_55", "0 36028797018963968 loop {img} 0", "too large device"),
    ("length_zero", "0 0 loop {img} 0", "zero-length target"),
]


@pytest.mark.parametrize("tbl,message,err", [
    pytest.param(t, m, e, id=i) for i, t, m, e in BAD_TABLES])
def test_bad_table_refused(files, tbl, message, err):
    """The table is refused with its own message and nothing is left behind:
    no device, no module figure above 0, no debugfs instance, the file
    writable."""
    assert_refused("bad", _fill(tbl, files), message, err)
    assert_nothing_left(files / "img")


@pytest.mark.parametrize("tbl,message", [pytest.param(t, m, id=i) for i, t, m in BAD_LENGTHS])
def test_bad_length_refused_by_dm_core(files, tbl, message):
    """Lengths that overflow or are zero never reach the target: dm core
    refuses them, and nothing is left behind."""
    assert_refused("bad", _fill(tbl, files), message, None, who=None)
    assert_nothing_left(files / "img")


@pytest.mark.parametrize("how", ["ro_mount", "ro_bind_mount"])
def test_read_only_mount_needs_read_only_table(remountable, how):
    """On a read-only mount (or read-only bind mount) a read-write table is
    refused with EROFS and its message; `dmsetup create --readonly` works
    and reads the file's bytes in block mode."""
    mp = remountable
    write_file(mp / "img-ro", MiB, seed=2)
    ro = Path(tempfile.mkdtemp(prefix="dmloop-robind-", dir="/tmp"))
    if how == "ro_mount":
        dmloop.run(["mount", "-o", "remount,ro", str(mp)])
        img = mp / "img-ro"
    else:
        dmloop.run(["mount", "--bind", str(mp), str(ro)])
        dmloop.run(["mount", "-o", "remount,bind,ro", str(ro)])
        img = ro / "img-ro"
    try:
        assert_refused("ro", table(img, MiB),
                       "File is on a read-only filesystem (use a read-only table)", "EROFS")
        assert_nothing_left()
        dev = dmloop.create("ro", table(img, MiB), readonly=True)
        try:
            assert status_fields("ro")["mode"] == "block"
            assert target_info("ro")["read_only"] == 1
            dmloop.verify_random(dev, MiB, seed=2, direct=True)
        finally:
            dmloop.remove("ro")
    finally:
        if how == "ro_bind_mount":
            dmloop.umount(ro)
        os.rmdir(ro)
    assert_nothing_left()


@pytest.mark.parametrize("flag", ["i", "a"], ids=["immutable", "append_only"])
def test_immutable_file_needs_read_only_table(files, flag):
    """An immutable or append-only file refuses a read-write table with EPERM
    (the kernel opens it with dentry_open(), which skips may_open(): block
    mode used to write straight through the flag); a read-only table works."""
    img, size = files / ("img-chattr-" + flag), MiB
    write_file(img, size, seed=14)
    with chattr(img, flag):
        for opts in ((), ("force_file",)):
            assert_refused("imm", table(img, size, opts=opts),
                           "File is immutable or append-only (use a read-only table)", "EPERM")
        dev = dmloop.create("imm", table(img, size), readonly=True)
        try:
            assert status_fields("imm")["mode"] == "block"
            dmloop.verify_random(dev, size, seed=14, direct=True)
        finally:
            dmloop.remove("imm")
    dmloop.verify_random(img, size, seed=14)
    assert_nothing_left(img)


@pytest.mark.parametrize("opts", [(), ("force_file",)], ids=["block", "file"])
def test_read_only_table_opens_file_read_only(remountable, opts):
    """`dmsetup create --readonly`: writes through the device fail (EPERM),
    reads return the file's bytes, and the file is opened read-only: the
    filesystem can then be remounted read-only under it, which a read-write
    table prevents (EBUSY: a file open for writing)."""
    mp = remountable
    img, size = mp / "img-rotable", MiB
    write_file(img, size, seed=3)

    dmloop.create("rw", table(img, size, opts=opts))
    try:
        p = _remount(mp, "ro")
        assert p.returncode != 0 and "busy" in p.stderr, p.stderr
    finally:
        dmloop.remove("rw")

    dev = dmloop.create("ro", table(img, size, opts=opts), readonly=True)
    try:
        assert "READ-ONLY" in dmloop.info("ro")
        assert target_info("ro")["read_only"] == 1
        fd = os.open(dev, os.O_WRONLY)
        try:
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"x" * 4096, 0)
            assert e.value.errno == errno.EPERM
        finally:
            os.close(fd)
        p = _remount(mp, "ro")
        assert p.returncode == 0, p.stderr
        dmloop.verify_random(dev, size, seed=3, direct=True)
    finally:
        dmloop.remove("ro")
    _remount(mp, "rw")
    dmloop.verify_random(img, size, seed=3)


# ------------------------------------------------------------ optional arguments

def test_require_block_on_ext4_gives_block_mode(files):
    """`1 require_block` on a fully written ext4 file loads in block mode."""
    img = files / "img-rb"
    write_file(img, MiB, seed=4)
    dev = dmloop.create("rb", table(img, MiB, opts=("require_block",)))
    try:
        st = status_fields("rb")
        assert (st["mode"], st["reason"]) == ("block", "-"), st
        dmloop.verify_random(dev, MiB, seed=4, direct=True)
    finally:
        dmloop.remove("rb")


@pytest.mark.parametrize("where", ["tmpfs", "sparse_ext4"])
def test_require_block_refused_with_reason(files, where):
    """`1 require_block` where block mode is impossible fails the load with
    the reason, in ti->error and in its own log line, and leaves the file
    unpinned (the sparse ext4 case finds the hole before any pin)."""
    if where == "tmpfs":
        d = Path(tempfile.mkdtemp(prefix="dmloop-tmpfs-", dir="/tmp"))
        assert dmloop.run(["stat", "-f", "-c", "%T", str(d)]).stdout.strip() == "tmpfs"
        img = d / "img"
        write_file(img, 2 * MiB, seed=5)
        message, reason = "Block mode not possible: no block device", "no_bdev"
    else:
        img = files / "img-sparse"
        write_file(img, MiB, seed=5)
        os.truncate(img, 2 * MiB)           # a hole from 1 MiB on
        message = UNMAPPED_MSG
        reason = "hole:%d" % (MiB // os.statvfs(files).f_bsize)
    try:
        lines = assert_refused("rb", table(img, 2 * MiB, opts=("require_block",)),
                               message, "EINVAL")
        assert any("device-mapper: loop: %s: block mode required, not possible: %s"
                   % (img, reason) in l for l in lines), lines
        assert_nothing_left(img)
    finally:
        if where == "tmpfs":
            shutil.rmtree(img.parent)


def test_unaligned_offset_gets_file_mode(files):
    """An offset that is a multiple of 512 but not of the filesystem block
    size cannot be remapped block by block: file mode with reason
    `unaligned_offset`, data at the right place; require_block refuses it."""
    img, size, offset = files / "img-unaligned", 2 * MiB, 512
    write_file(img, size, seed=15)
    assert os.statvfs(files).f_bsize > offset
    lines = assert_refused("ua", table(img, size - 4096, offset, ("require_block",)),
                           "Block mode not possible: offset not block aligned", "EINVAL")
    assert any("block mode required, not possible: unaligned_offset" in l for l in lines), lines
    dev = dmloop.create("ua", table(img, size - 4096, offset))
    try:
        st = status_fields("ua")
        assert (st["mode"], st["reason"]) == ("file", "unaligned_offset"), st
        want = dmloop.random_bytes(size, 15)[offset:offset + size - 4096]
        assert dmloop.read_bytes(dev, size - 4096, direct=True) == want
    finally:
        dmloop.remove("ua")


def test_force_file_gives_file_mode(files):
    """`1 force_file` on a file block mode could map: file mode, reason
    `forced`, data round trip both ways, the file not pinned."""
    img, size = files / "img-ff", MiB
    write_file(img, size, seed=6)
    dev = dmloop.create("ff", table(img, size, opts=("force_file",)))
    try:
        st = status_fields("ff")
        assert (st["mode"], st["extents"], st["reason"]) == ("file", 0, "forced"), st
        assert not is_pinned(img)
        dmloop.verify_random(dev, size, seed=6, direct=True)
        dmloop.write_random(dev, size, seed=7, direct=True, fsync=True)
    finally:
        dmloop.remove("ff")
    dmloop.verify_random(img, size, seed=7)


@pytest.mark.parametrize("opts,mode,direct", [
    pytest.param(("force_file",), "file", True, id="file-direct"),
    pytest.param(("force_file", "no_direct_io"), "file", False, id="file-no_direct_io"),
    pytest.param(("no_direct_io",), "block", None, id="block-no_direct_io"),
])
def test_no_direct_io(files, opts, mode, direct):
    """`no_direct_io` is accepted; in file mode every I/O is then buffered
    (without it, aligned I/O is direct); in block mode it changes nothing."""
    img, size = files / "img-nd", MiB
    write_file(img, size, seed=8)
    dev = dmloop.create("nd", table(img, size, opts=opts))
    try:
        assert dmloop.table("nd") == table(img, size, opts=opts)
        assert status_fields("nd")["mode"] == mode
        dmloop.write_random(dev, size, seed=9, direct=True, fsync=True)
        dmloop.verify_random(dev, size, seed=9, direct=True)
        info = target_info("nd")
        if direct is None:
            assert (info["direct_ios"], info["buffered_ios"]) == (0, 0), info
        elif direct:
            assert info["direct_ios"] > 0 and info["buffered_ios"] == 0, info
        else:
            assert info["direct_ios"] == 0 and info["buffered_ios"] > 0, info
    finally:
        dmloop.remove("nd")
    dmloop.verify_random(img, size, seed=9)


# ------------------------------------------------------------ table and status output

# (id, file name, offset, optional args): one target each, in one table.
ROUND_TRIP = [
    ("plain", "rt-plain", 0, ()),
    ("offset", "rt-offset", 4096, ()),
    ("force_file", "rt-force_file", 0, ("force_file",)),
    ("require_block", "rt-require_block", 0, ("require_block",)),
    ("no_direct_io", "rt-no_direct_io", 0, ("no_direct_io",)),
    ("two_opts", "rt-two_opts", 0, ("force_file", "no_direct_io")),
    ("offset_two_opts", "rt-offset_two_opts", 8192, ("require_block", "no_direct_io")),
    # libdevmapper doubles backslashes and dm_split_args() undoes that: the
    # path prints back raw.  (A space cannot be passed through dmsetup at all.)
    ("backslash_in_path", "rt-back\\slash", 0, ()),
]
RT_SIZE = 64 * 1024


def _multi_target(files, rows):
    """One table with a target per row (start, its own file, offset, options),
    each row's file written on first use; returns the table's lines."""
    lines, start = [], 0
    for _, fname, offset, opts in rows:
        img = files / fname
        if not img.exists():
            write_file(img, RT_SIZE, seed=16)
        line = table(img, RT_SIZE - offset, offset, opts)
        line = "%d%s" % (start, line[1:])
        lines.append(line)
        start += (RT_SIZE - offset) // 512
    return lines


def _table_and_modes(name):
    return (dmloop.table(name).splitlines(),
            [line.split()[3] for line in dmloop.status(name).splitlines()])


def _diff(ids, got, want):
    return "\n".join("%s: got %r, want %r" % (i, g, w)
                     for i, g, w in zip(ids, got, want) if g != w) or \
        "%d lines, want %d" % (len(got), len(want))


def test_table_prints_back_what_recreates_it(files):
    """`dmsetup table` prints exactly the line each target was created with
    (plain, with an offset, every optional argument and pairs of them, a
    backslash in the path); a device created from that output has the
    identical table, and each target the same mode."""
    ids = [r[0] for r in ROUND_TRIP]
    lines = _multi_target(files, ROUND_TRIP)
    dmloop.create("tt", "\n".join(lines))
    try:
        printed, modes = _table_and_modes("tt")
    finally:
        dmloop.remove("tt")
    assert printed == lines, _diff(ids, printed, lines)
    dmloop.create("tt", "\n".join(printed))
    try:
        again, modes_again = _table_and_modes("tt")
    finally:
        dmloop.remove("tt")
    assert again == printed, _diff(ids, again, printed)
    assert modes_again == modes, _diff(ids, modes_again, modes)
    want_modes = ["file" if "force_file" in r[3] else "block" for r in ROUND_TRIP]
    assert modes == want_modes, _diff(ids, modes, want_modes)


# (id, optional args as given, as printed back, offset as given)
EQUIVALENT = [
    ("zero_opts", "0 0", "0"),
    ("opts_reordered", "0 2 no_direct_io force_file", "0 2 force_file no_direct_io"),
    ("opts_upper_case", "0 1 FORCE_FILE", "0 1 force_file"),
    ("offset_plus_sign", "+512", "512"),
    ("workers_spelled_otherwise", "0 3 WORKERS +08 force_file", "0 3 force_file workers 8"),
    ("workers_in_block_mode", "0 2 workers 1", "0 2 workers 1"),
]


def test_table_prints_canonical_form_of_equivalent_input(files):
    """Input the parser accepts in another spelling (an empty option list,
    options reordered or in upper case, a `+` sign) prints back in one
    canonical spelling, which itself prints back unchanged."""
    ids = [e[0] for e in EQUIVALENT]
    sectors = RT_SIZE // 512 - 1
    given, canonical = [], []
    for i, (name, g, c) in enumerate(EQUIVALENT):
        img = files / ("eq-" + name)
        if not img.exists():
            write_file(img, RT_SIZE, seed=17)
        head = "%d %d loop %s " % (i * sectors, sectors, img)
        given.append(head + g)
        canonical.append(head + c)
    dmloop.create("tt", "\n".join(given))
    try:
        printed = dmloop.table("tt").splitlines()
    finally:
        dmloop.remove("tt")
    assert printed == canonical, _diff(ids, printed, canonical)
    dmloop.create("tt", "\n".join(printed))
    try:
        again = dmloop.table("tt").splitlines()
    finally:
        dmloop.remove("tt")
    assert again == printed, _diff(ids, again, printed)


def test_status_leads_with_mode_and_extent_count(files):
    """`dmsetup status`: `block <extents> <reads> <writes> <flushes> <splits> -`
    with the extent count of the table and live counters; file mode reports
    `file 0 ... <reason>`."""
    img = files / "img"
    dev = dmloop.create("st", table(img, SIZE))
    try:
        st = status_fields("st")
        assert st["mode"] == "block" and st["reason"] == "-"
        assert st["extents"] == target_info("st")["extents"] >= 1
        dmloop.read_bytes(dev, SIZE, direct=True)
        dmloop.write_random(dev, SIZE, seed=1, direct=True, fsync=True)
        st = status_fields("st")
        assert st["reads"] > 0 and st["writes"] > 0 and st["flushes"] > 0, st
    finally:
        dmloop.remove("st")
    dmloop.create("st", table(img, SIZE, opts=("force_file",)))
    try:
        st = status_fields("st")
        assert (st["mode"], st["extents"], st["reason"]) == ("file", 0, "forced"), st
    finally:
        dmloop.remove("st")


def test_status_and_table_filter_by_target(files):
    """In a table with a `zero` target before a `loop` target, `--target
    loop` shows only the loop line, and the loop target maps its own
    sectors (target-relative) to the file."""
    dmloop.modprobe("dm-zero")
    img = files / "img"
    tbl = "0 2048 zero\n2048 %d loop %s 0" % (SECTORS, img)
    dev = dmloop.create("mix", tbl)
    try:
        st = dmloop.dmsetup("status", "--target", "loop", "mix").stdout.strip().splitlines()
        assert len(st) == 1 and st[0].startswith("2048 %d loop block 1 " % SECTORS), st
        tt = dmloop.dmsetup("table", "--target", "loop", "mix").stdout.strip().splitlines()
        assert tt == ["2048 %d loop %s 0" % (SECTORS, img)]
        zero = dmloop.dmsetup("status", "--target", "zero", "mix").stdout.strip().splitlines()
        assert zero == ["0 2048 zero"]
        dmloop.verify_random(dev, SIZE, seed=1, offset=2048 * 512, direct=True)
    finally:
        dmloop.remove("mix")


IMA = Path("/sys/kernel/security/ima")
IMA_POLICY_RULE = "measure func=CRITICAL_DATA label=device-mapper template=ima-buf\n"


def _ima_measure_dm():
    """Make IMA measure device-mapper's critical data; False if it cannot."""
    if not IMA.is_dir():
        dmloop.run(["mount", "-t", "securityfs", "securityfs", "/sys/kernel/security"],
                   check=False)
    if not IMA.is_dir():
        return False
    policy = IMA / "policy"
    if policy.exists():
        try:
            policy.write_text(IMA_POLICY_RULE)
        except OSError:
            return False
    return True


def _ima_dm_records(name):
    out = []
    for line in (IMA / "ascii_runtime_measurements").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and f[2] == "ima-buf" and f[4] == "dm_table_load":
            text = bytes.fromhex(f[5]).decode("utf-8", "replace")
            if ";name=%s," % name in text:
                out.append(text)
    return out


def test_ima_measures_table_in_in_tree_form(files):
    """IMA's dm_table_load record of a loop table carries the target in the
    in-tree form: `target_name=loop,target_version=1.1.0,` then the file,
    offset, mode, reason and extent count."""
    if not _ima_measure_dm():
        pytest.skip("IMA is not available, or its policy was already set this boot "
                    "(CONFIG_IMA_WRITE_POLICY is off: the policy file takes one write)")
    img = files / "img"
    dmloop.create("ima", table(img, SIZE))
    try:
        records = _ima_dm_records("ima")
    finally:
        dmloop.remove("ima")
    if not records:
        pytest.skip("IMA recorded no dm_table_load (no CRITICAL_DATA rule in the policy "
                    "set earlier this boot)")
    want = ("target_index=0,target_begin=0,target_len=%d,target_name=loop,"
            "target_version=1.1.0,file_name=%s,offset=0,mode=block,reason=-,extents=1;"
            % (SECTORS, img))
    assert want in records[-1], records[-1]


# ------------------------------------------------------------ dmlosetup

@pytest.fixture
def dmlosetup():
    """dmsetup's losetup personality: a symlink named dmlosetup (under /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="dmloop-bin-", dir="/tmp"))
    link = d / "dmlosetup"
    os.symlink(shutil.which("dmsetup"), link)

    def run(*args, cwd=None, check=True):
        p = subprocess.run([str(link)] + [str(a) for a in args], cwd=cwd, text=True,
                           capture_output=True, timeout=120)
        if check:
            assert p.returncode == 0, "dmlosetup %s: %s%s" % (args, p.stdout, p.stderr)
        return p

    yield run
    shutil.rmtree(d)


def _dmlosetup_create(dmlosetup, *args, cwd=None):
    dmlosetup(*args, cwd=cwd)
    dmloop.created_devices.append("loop0")
    return Path("/dev/mapper/loop0")


def test_dmlosetup_create_and_delete(files, dmlosetup):
    """`dmlosetup loop0 <relative path through a symlink>` writes
    `0 <size>>9> loop <canonical path> 0`, the device is in block mode and
    carries data to the file; `dmlosetup -d loop0` removes it."""
    os.mkdir(files / "real")
    os.symlink("real", files / "link")
    img, size = files / "real" / "img", 2 * MiB
    write_file(img, size, seed=10)
    dev = _dmlosetup_create(dmlosetup, "loop0", "link/img", cwd=files)
    assert dmloop.table("loop0") == "0 %d loop %s 0" % (size >> 9, os.path.realpath(img))
    assert status_fields("loop0")["mode"] == "block"
    dmloop.write_random(dev, size, seed=11, direct=True)
    dmlosetup("-d", "loop0")
    dmloop.created_devices.remove("loop0")
    assert "loop0" not in dmloop.dm_devices()
    assert not is_pinned(img)
    dmloop.verify_random(img, size, seed=11)


def test_dmlosetup_offset(files, dmlosetup):
    """`dmlosetup -o <offset>` writes `0 <(size-offset)>>9> loop <path> <offset>`
    and the device starts at that byte of the file."""
    img, size, offset = files / "img-offset", 2 * MiB, 12288
    write_file(img, size, seed=12)
    dev = _dmlosetup_create(dmlosetup, "-o", offset, "loop0", img)
    try:
        assert dmloop.table("loop0") == "0 %d loop %s %d" % ((size - offset) >> 9, img, offset)
        assert status_fields("loop0")["mode"] == "block"
        want = dmloop.random_bytes(size, 12)[offset:]
        assert dmloop.read_bytes(dev, size - offset, direct=True) == want
    finally:
        dmlosetup("-d", "loop0")
        dmloop.created_devices.remove("loop0")


@pytest.mark.parametrize("offset,message,who", [
    pytest.param(MiB, "zero-length target", None, id="at_size"),
    pytest.param(2 * MiB, "too large device", None, id="past_size"),
    pytest.param(100, "Offset not a multiple of 512 bytes", "loop", id="unaligned"),
])
def test_dmlosetup_bad_offset_refused(dmlosetup, files, offset, message, who):
    """dmlosetup does not check the offset against the size: an offset at or
    past the end gives a zero or wrapped length that dm core refuses, an
    unaligned one the target refuses; nothing is left behind."""
    pos = dmloop.kmsg_pos()
    p = dmlosetup("-o", offset, "loop0", files / "img", check=False)
    lines = dmloop.kmsg_since(pos)
    assert "loop0" not in dmloop.dm_devices(), p.stderr
    want = table_error_re(message, "EINVAL" if who else None, who)
    assert any(want.search(l) for l in lines), "\n".join(lines) + p.stderr
    assert_nothing_left(files / "img")


@pytest.mark.parametrize("why", ["ro_mount", "immutable"])
def test_dmlosetup_read_only_fallback(remountable, dmlosetup, why):
    """dmlosetup on a file it cannot open for writing (read-only mount, or an
    immutable file) falls back to a read-only table; the target accepts it
    and reads work."""
    img, size = remountable / ("img-dmlosetup-" + why), MiB
    write_file(img, size, seed=13)
    with contextlib.ExitStack() as stack:
        if why == "ro_mount":
            dmloop.run(["mount", "-o", "remount,ro", str(remountable)])
        else:
            stack.enter_context(chattr(img, "i"))
        dev = _dmlosetup_create(dmlosetup, "loop0", img)
        try:
            assert "READ-ONLY" in dmloop.info("loop0")
            assert target_info("loop0")["read_only"] == 1
            dmloop.verify_random(dev, size, seed=13, direct=True)
        finally:
            dmlosetup("-d", "loop0")
            dmloop.created_devices.remove("loop0")
