"""Hostile table lines: the constructor refuses each cleanly or accepts it
correctly, and nothing is leaked, pinned or crashed.

A seeded generator feeds several hundred malformed and adversarial lines
(numbers at and past 2^64, lengths, optional-argument counts, `..`, escaped
and unescaped spaces, special files, paths at and past PATH_MAX, NUL-free
garbage) through DM_TABLE_LOAD on /dev/mapper/control: one system call a
table, where dmsetup costs a process.  Where the outcome follows from
module/dm-loop.rst the generator says which it must be; every accepted
table must print back a line that loads again, and must read the file's own
bytes once live.  Three races follow: a symlink flipped between a regular
file and a fifo, a directory, /dev/null and nothing while tables load; the
file unlinked and relinked; its filesystem unmounted (also lazily) under
the loads.  At the end every file takes writes again (nothing pinned), the
module's figures are zero and the kmalloc caches have not grown.

DMLOOP_HOSTILE_SEED and DMLOOP_HOSTILE_COUNT change the seed and the count
(600; the `stress` variant, run by make stress, takes 5000); both are
printed (run pytest with -s to see them) and written to the kernel log.
"""

import errno
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dmloop
from reliability_util import (  # noqa: F401 (module_figures_back_to_zero: autouse fixture)
    DEBUGFS, KiB, MiB, DmControl, assert_module_idle, debugfs_instances,
    module_figures_back_to_zero, read_direct, remove_all, settle_slabs, slab_active,
    slab_growth, stress, write_probe)

SEED = int(os.environ.get("DMLOOP_HOSTILE_SEED", "20250917"))
COUNT = int(os.environ.get("DMLOOP_HOSTILE_COUNT", "600"))
NAME = "hostile"
SIZE = MiB                              # img, sparse: the backing files
SECTORS = SIZE // 512
PATH_MAX = 4096
# What a refusal may say: anything else (ENOMEM, EIO, EFAULT...) is a bug.
REFUSAL_ERRNOS = {errno.EINVAL, errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG,
                  errno.ELOOP, errno.EACCES, errno.EROFS, errno.EBUSY, errno.EPERM,
                  errno.ETXTBSY}
SLAB_TOLERANCE = 200                    # objects per kmalloc cache


# ------------------------------------------------------------ the arena

class Arena:
    """ext4 on a scratch disk with the files the hostile lines name."""

    def __init__(self, mp, ro):
        self.mp, self.ro = mp, ro
        self.img, self.sparse = mp / "img", mp / "sparse"
        self.content = {}

    def p(self, rel):
        return "%s/%s" % (self.mp, rel)


def _build_arena(mp, ro):
    a = Arena(mp, ro)
    dmloop.write_random(a.img, SIZE, seed=1, fsync=True)
    a.content[str(a.img)] = dmloop.random_bytes(SIZE, 1)
    with open(a.sparse, "wb") as f:
        f.truncate(SIZE)
    for name, seed in (("a b", 2), ("back\\slash", 3), ("tab\there", 4), ("voil\u00e0", 8)):
        dmloop.write_random(mp / name, 64 * KiB, seed=seed, fsync=True)
        a.content[str(mp / name)] = dmloop.random_bytes(64 * KiB, seed)
    os.mkdir(mp / "dir")
    os.mkdir(mp / "sub")
    os.mkfifo(mp / "fifo")
    links = {"link_img": str(a.img), "link_rel": "img", "link_dir": "dir",
             "link_fifo": "fifo", "link_null": "/dev/null", "link_dangling": "missing",
             "loop_a": "loop_b", "loop_b": "loop_a", "link_proc": "/proc/self/status",
             "link_disk": dmloop.scratch_disk(2)}
    for name, target in links.items():
        os.symlink(target, mp / name)
    # A chain longer than the kernel follows (40 links): ELOOP.
    os.symlink("img", mp / "chain0")
    for i in range(1, 45):
        os.symlink("chain%d" % (i - 1), mp / ("chain%d" % i))
    # A regular file whose path is longer than PATH_MAX (made one level at a
    # time: no system call takes such a path), and a symlink over its first
    # 12 levels that reaches it in fewer bytes.
    levels = ["L" * 200] * ((PATH_MAX + 200 - len(str(mp))) // 201 + 1)
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for lv in levels:
            os.mkdir(lv, dir_fd=fd)
            nfd = os.open(lv, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open("deep", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(ffd, dmloop.random_bytes(64 * KiB, 5))
        os.fsync(ffd)
        os.close(ffd)
    finally:
        os.close(fd)
    a.deep = "%s/%s/deep" % (mp, "/".join(levels))
    assert len(a.deep) > PATH_MAX
    os.symlink("/".join(levels[:12]), mp / "deeplink")
    a.deep_via_link = "%s/deeplink/%s/deep" % (mp, "/".join(levels[12:]))
    assert len(a.deep_via_link) < PATH_MAX - 1
    a.content[a.deep_via_link] = dmloop.random_bytes(64 * KiB, 5)
    return a


@pytest.fixture(scope="module")
def arena():
    """ext4 on scratch disk 2 (files, links, fifo, dirs) plus a read-only
    bind mount of it."""
    disk = dmloop.scratch_disk(2)
    with dmloop.mounted_fs("ext4", dev=disk, mkfs_args=("-b", "4096")) as mp:
        ro = Path("/tmp/dmloop-hostile-ro")
        ro.mkdir(exist_ok=True)
        a = _build_arena(mp, ro)
        dmloop.run(["mount", "--bind", str(mp), str(ro)])
        dmloop.run(["mount", "-o", "remount,bind,ro", str(ro)])
        try:
            yield a
        finally:
            remove_all(NAME)
            dmloop.umount(ro)


# ------------------------------------------------------------ the generator

def _path_cases(a):
    """(path token as it goes into the table, expected outcome, file it names)."""
    img = str(a.img)
    mp = str(a.mp)
    exact = mp + "/"
    while len(exact) + len("img") < PATH_MAX - 1:
        exact += "./" if PATH_MAX - 1 - len(exact) - len("img") >= 2 else "/"
    exact += "img"
    assert len(exact) == PATH_MAX - 1
    too_long = mp + "/" + "./" * ((PATH_MAX - len(mp)) // 2) + "img"
    return [
        (img, "accept", img),
        (a.p("link_img"), "accept", img),
        (a.p("link_rel"), "accept", img),
        (a.p("sub/../img"), "accept", img),
        ("/../../.." + img, "accept", img),
        ("//" + img.replace("/", "//"), "accept", img),
        (a.p("./img"), "accept", img),
        (a.p("\\i\\m\\g"), "accept", img),              # dm unescapes every \x
        (a.p("back\\\\slash"), "accept", a.p("back\\slash")),
        # Whitespace, even escaped: the TABLE line could not show it.
        (a.p("a\\ b"), "refuse", None),
        (a.p("tab\\\there"), "refuse", None),
        (a.p("a b"), "refuse", None),                   # splits into "<mp>/a" "b"
        # UTF-8 "à" ends in 0xa0, a space to the kernel's isspace().
        (a.p("voil\u00e0"), "refuse", None),
        (exact, "accept", img),                         # PATH_MAX - 1 bytes
        (too_long, "refuse", None),                     # PATH_MAX and more
        (str(a.deep), "refuse", None),                  # the real path is too long
        (a.deep_via_link, "accept", a.deep_via_link),   # ...but not through a link
        (a.p("L" * 256), "refuse", None),               # a component past NAME_MAX
        ("img", "refuse", None),
        ("./img", "refuse", None),
        ("../img", "refuse", None),
        ("~/img", "refuse", None),
        (img + "/", "refuse", None),
        (img + "/.", "refuse", None),
        (img + "/..", "refuse", None),
        (mp, "refuse", None),
        (a.p("dir"), "refuse", None),
        (a.p("fifo"), "refuse", None),
        (a.p("missing"), "refuse", None),
        (a.p("link_dir"), "refuse", None),
        (a.p("link_fifo"), "refuse", None),
        (a.p("link_null"), "refuse", None),
        (a.p("link_dangling"), "refuse", None),
        (a.p("link_proc"), "refuse", None),             # size 0: offset past the end
        (a.p("link_disk"), "refuse", None),
        (a.p("loop_a"), "refuse", None),
        (a.p("chain44"), "refuse", None),
        ("/", "refuse", None),
        ("/dev/null", "refuse", None),
        ("/dev/zero", "refuse", None),
        ("/dev/mapper/control", "refuse", None),
        (dmloop.scratch_disk(2), "refuse", None),
        ("/proc/self/status", "refuse", None),
        ("/proc/sysrq-trigger", "refuse", None),
        ("/sys/kernel/notes", "refuse", None),          # binary attribute: no write
        ("/sys/kernel/debug/dm-loop", "refuse", None),
        (str(a.ro / "img"), "refuse", None),            # read-write table, ro mount
        ("\\", "refuse", None),
        ("/\\", "refuse", None),
    ]


INTERESTING = [0, 1, 7, 8, 511, 512, 513, 4095, 4096, 4097, SIZE - 4096, SIZE - 512,
               SIZE - 1, SIZE, SIZE + 512, 2 * SIZE, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**32 + 512, 2**55, 2**63 - 512, 2**63 - 1, 2**63, 2**64 - 512,
               2**64 - 1, 2**64, 2**64 + 512, 2**65, 10**30]
LENGTHS = [1, 7, 8, 9, 512, SECTORS - 8, SECTORS - 1, SECTORS, SECTORS + 1, 2 * SECTORS,
           2**32 // 512, 2**32, 2**54, 2**55, 2**63 // 512, 2**63 // 512 + 1, 2**63,
           2**64 - 1]
WORDS = ["require_block", "force_file", "no_direct_io", "REQUIRE_BLOCK", "Force_File",
         "no_direct_IO", "frobnicate", "require", "", "0", "-", "force_file\\ "]
BAD_NUMBERS = ["-1", "-512", "+", "0x200", "0X0", "1e3", "512k", "512.0", "0 0", "٣",
               "\\-1", "4096\\", "18446744073709551616", "99999999999999999999999999",
               "0" * 400 + "512", "9" * 5000, "\\5\\1\\2", "512\\\n"]


def _opts_expect(words):
    """Whether dm-loop.rst allows the optional-argument words after the
    offset (None when the outcome depends on details we do not model)."""
    if not words:
        return True, set()
    count = words[0]
    if not count.isdigit():
        return False, None
    n, rest = int(count), words[1:]
    if n > 3 or n != len(rest):
        return False, None
    seen = set()
    for w in rest:
        lw = w.lower()
        if lw not in ("require_block", "force_file", "no_direct_io") or lw in seen:
            return False, None
        seen.add(lw)
    if {"require_block", "force_file"} <= seen:
        return False, None
    return True, seen


def _numeric_case(rng, a):
    """A table over img or sparse with offsets, lengths and options drawn
    from the interesting values: the outcome follows from the rules."""
    sparse = rng.random() < 0.3
    path = str(a.sparse if sparse else a.img)
    off = rng.choice(INTERESTING + [rng.randrange(0, 2 * SIZE, 512),
                                    rng.randrange(0, SIZE, 4096)])
    if rng.random() < 0.5:
        length = rng.choice(LENGTHS)
    else:
        length = rng.randrange(1, max(2, (SIZE - min(off, SIZE)) // 512 + 2))
    words = []
    if rng.random() < 0.5:
        k = rng.choice([0, 1, 1, 2, 3])
        chosen = rng.sample(WORDS, k) if rng.random() < 0.6 else \
            rng.sample(["require_block", "force_file", "no_direct_io"], min(k, 3))
        cnt = str(len(chosen)) if rng.random() < 0.8 else rng.choice(
            ["4", "-1", "99", "4294967296", "18446744073709551616", "03", str(max(0, k - 1)),
             str(2**32 + k), str(2**64 + k)])
        words = [cnt] + [w for w in chosen if w]
    ok, opts = _opts_expect(words)
    fits = off < SIZE and off % 512 == 0 and off + length * 512 <= SIZE
    if ok is None:
        expect = None
    elif not ok or not fits:
        expect = "refuse"
    elif "require_block" in opts and (sparse or off % 4096):
        expect = "refuse"
    else:
        expect = "accept"
    params = " ".join([path, str(off)] + words)
    return "numeric", length, params, expect, path, off


def _bad_number_case(rng, a):
    tok = rng.choice(BAD_NUMBERS)
    words = rng.choice([[], ["0"], ["1", "force_file"], [tok]])
    if rng.random() < 0.5:
        params = " ".join([str(a.img), tok] + words)
    else:
        params = " ".join([str(a.img), "0", tok] + words)
    # A few of these (leading zeros, escaped digits, "512\<LF>") are valid
    # numbers to kstrtoull; the rest must be refused.
    return "bad_number", rng.choice([8, SECTORS]), params, None, str(a.img), None


def _path_case(rng, a, paths):
    tok, expect, target = rng.choice(paths)
    off = rng.choice([0, 0, 0, 4096, 512])
    size = len(a.content.get(target, b"")) or SIZE
    length = rng.choice([8, (size - off) // 512])
    opts = rng.choice(["", "", " 1 force_file", " 1 no_direct_io", " 1 require_block"])
    if expect == "accept" and opts == " 1 require_block" and off % 4096:
        expect = "refuse"
    return "path", length, "%s %d%s" % (tok, off, opts), expect, target, off


def _garbage_case(rng, a):
    """NUL-free bytes: raw, after a valid head, or as a huge token list."""
    kind = rng.randrange(4)
    junk = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 300)))
    if kind == 0:
        params = junk
    elif kind == 1:
        params = ("%s 0 " % a.img).encode() + junk
    elif kind == 2:
        params = b"/" + junk.replace(b" ", b"/")
    else:
        params = ("%s 0 " % a.img).encode() + b" ".join(
            [b"x"] * rng.choice([3, 4, 1000, 10000]))
    # Raw junk almost never starts with "/": refused; the rest may be anything.
    expect = "refuse" if kind == 0 and not params.lstrip().startswith(b"/") else None
    return "garbage", rng.choice([1, 8, SECTORS, 2**64 - 1]), params, expect, None, None


def hostile_tables(seed, count, a):
    """`count` hostile cases from `seed`: (category, length, params, expected
    outcome or None, file named, offset)."""
    rng = random.Random(seed)
    paths = _path_cases(a)
    out = []
    # Every path case once with a plain table, the counts that wrap in a
    # sscanf("%u"), then a random mix.
    for tok, expect, target in paths:
        out.append(("path", 8, "%s 0" % tok, expect, target, 0))
    for opts in ("4294967296", "4294967297 force_file", "18446744073709551616",
                 "18446744073709551617 force_file", "18446744073709551619 a b c"):
        out.append(("count", 8, "%s 0 %s" % (a.img, opts), "refuse", None, 0))
    while len(out) < count:
        r = rng.random()
        if r < 0.45:
            out.append(_numeric_case(rng, a))
        elif r < 0.6:
            out.append(_bad_number_case(rng, a))
        elif r < 0.8:
            out.append(_path_case(rng, a, paths))
        else:
            out.append(_garbage_case(rng, a))
    return out[:count]


# ------------------------------------------------------------ checks

def _assert_no_inactive(dm):
    assert not dm.info(NAME).inactive, "a refused table left an inactive table behind"


def _instance_info():
    """The debugfs `info` of the one loop target instance there is."""
    insts = debugfs_instances()
    assert len(insts) == 1, insts
    text = (DEBUGFS / insts[0] / "info").read_text()
    return dict(line.split(": ", 1) for line in text.splitlines())


def _check_accepted(dm, a, params, length, target):
    """An accepted table prints a line that loads again and prints the
    same, and once live reads the bytes of the regular file it names."""
    tbl = dm.table(NAME, inactive=True)
    assert len(tbl) == 1 and tbl[0][2] == "loop", tbl
    printed = tbl[0][3]
    # Loaded again as dmsetup sends a line: libdevmapper escapes backslashes.
    dm.load(NAME, [(0, length, "loop", printed.replace("\\", "\\\\"))])
    assert dm.table(NAME, inactive=True)[0][3] == printed, (params[:200], printed[:200])
    dm.resume(NAME)
    info = dict(line.split(": ", 1) for line in dm.message(NAME, 0, "info").splitlines())
    assert info["mode"] in ("block", "file"), info
    if target is None:
        return
    st = os.stat(target)
    assert stat.S_ISREG(st.st_mode)
    assert int(info["inode"]) == st.st_ino, (info, target)
    off = int(info["offset"])       # what the kernel made of the offset token
    want = a.content.get(target, bytes(SIZE))[off:off + min(length * 512, 64 * KiB)]
    got = read_direct(dm.info(NAME).node, 0, len(want))
    assert got == want, "%r: the device does not read the file's bytes at %d" % (
        params[:200], off)


def _run_cases(dm, a, cases):
    tally = {"accepted": 0, "refused": 0}
    by_errno = {}
    surprises = []
    for cat, length, params, expect, target, off in cases:
        try:
            dm.load(NAME, [(0, length, "loop", params)])
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            assert e.errno in REFUSAL_ERRNOS, "%s %r: refused with %s" % (
                cat, params[:200], name)
            _assert_no_inactive(dm)
            tally["refused"] += 1
            by_errno[name] = by_errno.get(name, 0) + 1
            if expect == "accept":
                surprises.append("refused (%s): %s %r" % (name, cat, params[:200]))
            continue
        tally["accepted"] += 1
        if expect == "refuse":
            surprises.append("accepted: %s %r" % (cat, params[:200]))
            dm.clear(NAME)
            continue
        _check_accepted(dm, a, params, length, target)
        # Each case on a fresh device: a live table would turn the next
        # load into a reload, with its own rules.
        dm.remove_retry(NAME)
        dm.create(NAME)
    return tally, by_errno, surprises


@pytest.mark.parametrize("count", [pytest.param(COUNT, id="default"),
                                   pytest.param(max(COUNT, 5000), id="long", marks=stress)])
def test_generated_hostile_tables(arena, count):
    """Each of `count` generated lines (seeded) is refused with a sane errno
    and no inactive table left, or accepted as a device over the regular
    file it names that reads that file's bytes; the outcome is the one the
    rules give wherever they give one; afterwards nothing is left, nothing
    pinned and the kmalloc caches have not grown."""
    cases = hostile_tables(SEED, count, arena)
    print("\nhostile tables: seed %d, %d lines" % (SEED, len(cases)))
    dmloop.kmsg("dm-loop test: hostile tables: seed %d, %d lines" % (SEED, len(cases)))
    settle_slabs()
    before = slab_active()
    t0 = time.monotonic()
    with DmControl() as dm:
        dm.create(NAME)
        try:
            tally, by_errno, surprises = _run_cases(dm, arena, cases)
        finally:
            dm.remove_retry(NAME)
    summary = "hostile tables: %d accepted, %d refused %s in %.1f s" % (
        tally["accepted"], tally["refused"], by_errno, time.monotonic() - t0)
    print(summary)
    dmloop.kmsg("dm-loop test: " + summary)
    assert not surprises, "\n".join(surprises)
    assert tally["accepted"] >= 50 and tally["refused"] >= 300, tally
    assert_module_idle()
    for f in (arena.img, arena.sparse, arena.mp / "a b"):
        assert write_probe(f) is None, "%s still refuses writes" % f
    settle_slabs()
    growth = slab_growth(before, slab_active())
    assert all(v < SLAB_TOLERANCE for v in growth.values()), (
        "kmalloc caches grew over %d lines: %s" % (len(cases), growth))


def test_whitespace_and_backslashes_in_paths(arena):
    """Device-mapper splits table lines on whitespace and libdevmapper
    passes a path's backslashes through literally: a path with a space is
    refused cleanly through dmsetup, bare or escaped, and through the ioctl
    even escaped (its TABLE line could not show it); a path with a
    backslash works, and the line `dmsetup table` prints recreates it
    (after the first device is gone: two block-mode devices never share a
    file)."""
    spaced = arena.mp / "a b"
    for line in ("0 8 loop %s 0" % spaced, "0 8 loop %s 0" % str(spaced).replace(" ", "\\ ")):
        p, lines = _dmsetup_create("hostile-sp", line)
        assert p.returncode != 0, "accepted: %r" % line
        assert "hostile-sp" not in dmloop.dm_devices()
    with DmControl() as dm:
        dm.create(NAME)
        try:
            pos = dmloop.kmsg_pos()
            with pytest.raises(OSError) as e:
                dm.load(NAME, [(0, 8, "loop", str(spaced).replace(" ", "\\ ") + " 0")])
            assert e.value.errno == errno.EINVAL
            assert any("loop: File path contains whitespace" in line
                       for line in dmloop.kmsg_since(pos)), dmloop.kmsg_since(pos)
            _assert_no_inactive(dm)
        finally:
            dm.remove_retry(NAME)

    slashed = arena.mp / "back\\slash"
    name = "hostile-bs"
    dmloop.create(name, "0 128 loop %s 0" % slashed)
    try:
        printed = dmloop.table(name)
        assert dmloop.read_bytes("/dev/mapper/" + name, 64 * KiB) == arena.content[str(slashed)]
    finally:
        dmloop.remove(name)
    assert printed == "0 128 loop %s 0" % slashed
    dmloop.create(name, printed)
    try:
        assert dmloop.table(name) == printed
        assert dmloop.read_bytes("/dev/mapper/" + name, 64 * KiB) == arena.content[str(slashed)]
    finally:
        dmloop.remove(name)
    assert_module_idle()


def _dmsetup_create(name, line):
    pos = dmloop.kmsg_pos()
    p = dmloop.dmsetup("create", name, check=False, input=line + "\n")
    if p.returncode == 0:
        dmloop.created_devices.append(name)
    return p, dmloop.kmsg_since(pos)


# ------------------------------------------------------------ races

# Child processes that change the namespace while the tables load.
FLIPPER = r"""
import os, sys, time
link, targets, stop = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
tmp = link + ".tmp"
i = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    t = targets[i % len(targets)]
    if t == "-":
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
    else:
        os.symlink(t, tmp)
        os.rename(tmp, link)
    i += 1
print(i)
"""

RELINKER = r"""
import os, sys
src, victim, stop = sys.argv[1], sys.argv[2], sys.argv[3]
i = blocked = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        os.link(src, victim)
    except FileExistsError:
        pass
    try:
        os.unlink(victim)
    except PermissionError:
        blocked += 1          # pinned by a block-mode table: EPERM, like a swapfile
    i += 1
print(i, blocked)
"""

UNMOUNTER = r"""
import ctypes, os, sys, time
disk, mp, stop = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
i = busy = 0
print("ready", flush=True)
while not os.path.exists(stop):
    if not os.path.ismount(mp):
        if libc.mount(disk.encode(), mp.encode(), b"ext4", 0, None):
            raise OSError(ctypes.get_errno(), "mount %s" % disk)
        time.sleep(0.02)                      # mounted a while, then not
    flags = 2 if i % 3 == 2 else 0            # every third: MNT_DETACH
    if libc.umount2(mp.encode(), flags):
        busy += 1
    i += 1
print(i, busy)
"""


def _race(code, args, dm, path, inodes, min_loads=200, min_seconds=5, max_seconds=60):
    """Load tables naming `path` (block and file mode in turn) while the
    child `code` changes the namespace: at least `min_loads` for at least
    `min_seconds`, and on until both outcomes were seen (or `max_seconds`).  Each is refused with a sane
    errno and nothing left, or accepted over one of `inodes` (checked in
    the instance's debugfs info)."""
    stop = Path("/tmp/dmloop-stop-%d" % os.getpid())
    if stop.exists():
        stop.unlink()
    child = subprocess.Popen([sys.executable, "-u", "-c", code] + args + [str(stop)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tally = {"accepted": 0, "refused": 0}
    try:
        ready = child.stdout.readline()
        assert ready.strip() == "ready", (ready, child.stderr.read() if child.poll() else "")
        t0 = time.monotonic()
        i = 0
        while (i < min_loads or time.monotonic() < t0 + min_seconds
               or not (tally["accepted"] and tally["refused"])):
            if time.monotonic() > t0 + max_seconds:
                break
            opts = " 1 force_file" if i % 2 else ""
            i += 1
            try:
                dm.load(NAME, [(0, 8, "loop", "%s 0%s" % (path, opts))])
            except OSError as e:
                assert e.errno in REFUSAL_ERRNOS, "%s: refused with %s" % (
                    path, os.strerror(e.errno))
                _assert_no_inactive(dm)
                tally["refused"] += 1
                continue
            tally["accepted"] += 1
            info = _instance_info()
            assert info["mode"] in ("block", "file"), info
            assert int(info["inode"]) in inodes, (info, inodes)
            dm.clear(NAME)
    finally:
        stop.touch()
        out, err = child.communicate(timeout=120)
        stop.unlink()
    assert child.returncode == 0, err
    return tally, out.strip()


def test_symlink_flipped_while_tables_load(arena):
    """A symlink switched atomically between the regular file, a fifo, a
    directory, /dev/null, a dangling target and nothing, as fast as a process
    can: every load is refused with a sane errno or accepted over a regular
    file; never a fifo opened (that would block), never a crash."""
    link = arena.mp / "flip"
    targets = [str(arena.img), str(arena.mp / "fifo"), str(arena.mp / "dir"), "/dev/null",
               "-", str(arena.mp / "missing"), str(arena.sparse)]
    with DmControl() as dm:
        dm.create(NAME)
        try:
            regular = {os.stat(arena.img).st_ino, os.stat(arena.sparse).st_ino}
            tally, flips = _race(FLIPPER, [str(link)] + targets, dm, link, regular)
            print("\nsymlink race: %s, %s flips" % (tally, flips))
            assert tally["accepted"] and tally["refused"], (
                "the race never went both ways: %s" % tally)
        finally:
            dm.remove_retry(NAME)
            if link.is_symlink():
                link.unlink()
    assert_module_idle()
    assert write_probe(arena.img) is None


def test_file_unlinked_while_tables_load(arena):
    """The file's name is linked and unlinked in a loop while tables load:
    refused (ENOENT) or accepted over that inode; a block-mode table pins it
    (the unlink gets EPERM meanwhile); afterwards it unlinks and takes writes."""
    src = arena.mp / "victim-src"
    dmloop.write_random(src, SIZE, seed=6, fsync=True)
    victim = arena.mp / "victim"
    with DmControl() as dm:
        dm.create(NAME)
        try:
            tally, out = _race(RELINKER, [str(src), str(victim)], dm, victim,
                               {os.stat(src).st_ino})
            print("\nunlink race: %s, (links, blocked unlinks) %s" % (tally, out))
            assert tally["accepted"] and tally["refused"], tally
        finally:
            dm.remove_retry(NAME)
    if victim.exists():
        victim.unlink()
    assert write_probe(src) is None
    src.unlink()
    assert_module_idle()


def test_filesystem_unmounted_while_tables_load(arena):
    """A filesystem mounted and unmounted (every third time lazily) in a
    loop while tables name a file on it: refused, or accepted and then the
    unmount waits (EBUSY) or detaches; after the last table the filesystem
    unmounts and checks clean."""
    disk = dmloop.scratch_disk(3)
    mp = Path("/tmp/dmloop-hostile-um")
    mp.mkdir(exist_ok=True)
    dmloop.make_fs(disk, "ext4", mp)
    dmloop.write_random(mp / "img", SIZE, seed=7, fsync=True)
    ino = os.stat(mp / "img").st_ino
    dmloop.umount(mp)
    with DmControl() as dm:
        dm.create(NAME)
        try:
            tally, out = _race(UNMOUNTER, [disk, str(mp)], dm, mp / "img", {ino},
                               min_loads=100)
            print("\nunmount race: %s, (cycles, busy) %s" % (tally, out))
            assert tally["accepted"] and tally["refused"], tally
        finally:
            dm.remove_retry(NAME)
    while os.path.ismount(mp):
        dmloop.umount(mp)
    # Lazily detached mounts go once their last file is closed: then the
    # disk can be opened exclusively again.
    for _ in range(100):
        try:
            os.close(os.open(disk, os.O_RDONLY | os.O_EXCL))
            break
        except OSError as e:
            assert e.errno == errno.EBUSY, e
            time.sleep(0.1)
    else:
        raise AssertionError("%s still in use after the last table went" % disk)
    p = dmloop.run(["e2fsck", "-fn", disk], check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_module_idle()
