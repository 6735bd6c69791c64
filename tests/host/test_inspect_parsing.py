# SPDX-License-Identifier: GPL-2.0
"""dmloop-inspect reads untrusted text: saved filefrag outputs, debugfs
dumps pasted into bug reports. Each malformed input must give exit 2 and a
message naming the file (and line), never a crash, a hang or a sanitizer
report; truncations and random damage must never be taken for a layout
silently (exit 0/1 only when what is left still parses).

Runs against the plain and the ASan/UBSan binary like test_inspect.py.
"""
import os
import random
import re

import pytest

from test_inspect import FF, DBG, binary, tool, instance_dir, write_extents  # noqa: F401

FRAG = os.path.join(FF, "ext4-4k-frag.txt")
FRAG_EXTENTS = os.path.join(instance_dir(os.path.join(DBG, "ext4-4k"), 1, 0, 2), "extents")
FRAG_INFO = os.path.join(instance_dir(os.path.join(DBG, "ext4-4k"), 1, 0, 2), "info")
SPARSE_FF = os.path.join(FF, "xfs-sparse.txt")
SPARSE_EXTENTS = os.path.join(instance_dir(os.path.join(DBG, "xfs-sparse"), 0, 0, 1), "extents")


def compare_filefrag(tool, path, expect=None):
    return tool("compare", "--extents", FRAG_EXTENTS, "--info", FRAG_INFO,
                "--filefrag", path, expect=expect)


def compare_extents(tool, path, expect=None):
    return tool("compare", "--extents", path, "--sectors", 2048,
                "--filefrag", FRAG, expect=expect)


def compare_extents_v2(tool, path, expect=None):
    return tool("compare", "--extents", path, "--sectors", 2048,
                "--filefrag", SPARSE_FF, expect=expect)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def frag_text():
    return open(FRAG).read()


def edit_line(text, index, fn):
    lines = text.split("\n")
    ext = [i for i, l in enumerate(lines) if re.match(r"^\s*\d+:", l)]
    lines[ext[index]] = fn(lines[ext[index]])
    return "\n".join(lines)


def set_fields(text, index, values):
    """Replace numbers of extent line `index`: {field number: text}, fields
    counted as filefrag prints them (ext, start, end, pstart, pend, length)."""
    def fn(line):
        nums = list(re.finditer(r"\d+", line))
        for k in sorted(values, reverse=True):
            m = nums[k]
            line = line[:m.start()] + values[k] + line[m.end():]
        return line
    return edit_line(text, index, fn)


# ------------------------------------------------------------ filefrag -v

def test_crlf_line_ends_are_read(tool, tmp_path):
    p = write(tmp_path, "crlf.txt", frag_text().replace("\n", "\r\n"))
    compare_filefrag(tool, p, expect=0)


FILEFRAG_BAD = {
    "empty": ("", "empty file"),
    "blank": ("\n\n  \n", "no 'File size of' line"),
    "garbage": ("hello world\nthis is not filefrag\n", "line 1"),
    "binary": (b"\x7fELF\x02\x01\x01\x00\x00\x00\n", "NUL byte"),
    "huge_number": (lambda t: set_fields(t, 1, {3: "99999999999999999999999"}), "below 2^64"),
    # 2^64 - 1 is a valid number; in bytes it is past 2^64.
    "max_u64": (lambda t: set_fields(t, 1, {3: "18446744073709551600", 4: "18446744073709551615"}),
                "past 2^64"),
    "negative": (lambda t: edit_line(t, 0, lambda l: l.replace("   0..", "  -1..", 1)), "line 4"),
    "length_mismatch": (lambda t: edit_line(t, 2, lambda l: l.replace("    32:", "    33:")),
                        "does not match"),
    "index_gap": (lambda t: edit_line(t, 3, lambda l: l.replace("   3:", "   9:", 1)), "extent number 9"),
    "overlap": (lambda t: edit_line(t, 1, lambda l: l.replace("      16..", "      15..").replace("     16:", "     17:")),
                "overlap"),
    "unknown_flag": (lambda t: edit_line(t, 4, lambda l: l.replace("last,eof", "last,frobbed")),
                     "unknown extent flag 'frobbed'"),
    "two_files": (lambda t: t + t.split("\n", 1)[1], "second file"),
    "text_after": (lambda t: t + "stray words\n", "after the 'extents found'"),
    "no_trailer": (lambda t: t.rsplit("\n", 2)[0] + "\n", "truncated"),
    "no_header": (lambda t: "\n".join(l for l in t.split("\n") if "logical_offset" not in l),
                  "unexpected text"),
    "fibmap": ("Filesystem type is: ef53\nFile size of /x is 8192 (2 blocks of 4096 bytes)\n"
               "Discontinuity: Block 1 is at 100 (was 51)\n/x: 2 extents found\n", "filefrag -v -e"),
    "bad_unit": (lambda t: t.replace("blocks of 4096 bytes", "blocks of 3000 bytes"), "power of two"),
    "bad_size_line": (lambda t: t.replace(" is 1048576 (", " is 1048x576 ("), "File size of"),
    "bad_fs_magic": (lambda t: t.replace("is: ef53", "is: ext4!"), "hexadecimal"),
    "hex_output": (lambda t: edit_line(t, 0, lambda l: l.replace("      15:", "       f:", 1)), "line 4"),
    "long_line": (lambda t: edit_line(t, 0, lambda l: l + " " + "9" * 1000000), "line 4"),
}


@pytest.mark.parametrize("case", sorted(FILEFRAG_BAD))
def test_bad_filefrag_output(tool, tmp_path, case):
    data, needle = FILEFRAG_BAD[case]
    if callable(data):
        data = data(frag_text())
    path = write(tmp_path, case + ".txt", data)
    p = compare_filefrag(tool, path, expect=2)
    assert str(path) in p.stderr and needle in p.stderr, p.stderr
    assert len(p.stderr) < 2000  # one clear message, not the input echoed


def test_units_coarser_than_blocks_are_rejected(tool):
    """filefrag -b4096 on a 1 KiB-block file system rounds extents away."""
    d = instance_dir(os.path.join(DBG, "ext4-1k"), 0, 0, 1)
    p = tool("compare", "--extents", os.path.join(d, "extents"), "--info",
             os.path.join(d, "info"), "--filefrag", os.path.join(FF, "ext4-1k-frag.b4096.txt"),
             expect=2)
    assert "coarser" in p.stderr and "line 4" in p.stderr


def test_missing_filefrag_file(tool, tmp_path):
    p = compare_filefrag(tool, tmp_path / "nope.txt", expect=2)
    assert "nope.txt: No such file" in p.stderr


# ------------------------------------------------------- debugfs extents

GOOD = open(FRAG_EXTENTS).read()

EXTENTS_BAD = {
    "empty": ("", "empty file"),
    "wrong_magic": ("# something else\n", "not a dm-loop extents file"),
    "version_3": (GOOD.replace("extents v1", "extents v3"), "unsupported format"),
    "version_0": (GOOD.replace("extents v1", "extents v0"), "unsupported format"),
    # A v2 line (with a state) in a v1 file.
    "state_in_v1": (GOOD.rstrip("\n") + " written\n", "more"),
    "no_host": ("# dm-loop extents v1\n0 0 8 100\n", "before the '# host' header"),
    "bad_devno": (GOOD.replace("# host 7:0", "# host 7-0"), "line 2"),
    "big_devno": (GOOD.replace("# host 7:0", "# host 7:99999999999"), "line 2"),
    "two_hosts": (GOOD.replace("# index", "# host 7:0 extents 5\n# index"), "second '# host'"),
    "count_too_big": (GOOD.replace("extents 5", "extents 6"), "truncated"),
    "count_too_small": (GOOD.replace("extents 5", "extents 4"), "header says 4"),
    "count_huge": (GOOD.replace("extents 5", "extents 99999999999999999999999"), "line 2"),
    "cut_mid_line": (GOOD[:-3], "no newline at the end"),
    "huge_sector": (GOOD.replace("\n4 1024 1024", "\n4 99999999999999999999999 1024"), "line 8"),
    "sector_overflow": (GOOD.replace("\n4 1024 1024", "\n4 18446744073709551615 1024"), "2^64"),
    "bytes_overflow": (GOOD.replace("\n4 1024 1024", "\n4 36028797018963968 1024"), "2^64"),
    "negative": (GOOD.replace("\n4 1024 1024", "\n4 -1024 1024"), "line 8"),
    "plus_sign": (GOOD.replace("\n4 1024 1024", "\n4 +1024 1024"), "line 8"),
    "index_skip": (GOOD.replace("\n3 ", "\n7 "), "extent index 7"),
    "overlap": (GOOD.replace("\n4 1024 ", "\n4 1000 "), "inside or before"),
    "zero_length": (GOOD.replace("\n4 1024 1024", "\n4 1024 0"), "0 sectors"),
    "three_fields": (GOOD.replace("\n4 1024 1024 ", "\n4 1024 "), "fewer"),
    "five_fields": (GOOD.rstrip("\n") + " 7\n", "more"),
    "garbage": (GOOD.replace("\n2 ", "\nzwei "), "field 1"),
    "nul": (GOOD.replace("\n2 ", "\n2\x00"), "NUL byte"),
    "hex": (GOOD.replace("\n4 1024", "\n4 0x400"), "line 8"),
}


@pytest.mark.parametrize("case", sorted(EXTENTS_BAD))
def test_bad_extents_file(tool, tmp_path, case):
    data, needle = EXTENTS_BAD[case]
    path = write(tmp_path, case, data)
    p = compare_extents(tool, path, expect=2)
    assert str(path) in p.stderr and needle in p.stderr, p.stderr


def test_good_extents_file_is_good(tool, tmp_path):
    compare_extents(tool, write(tmp_path, "ok", GOOD), expect=0)


# ------------------------------------------- debugfs extents v2 (sparse)

GOOD_V2 = open(SPARSE_EXTENTS).read()
assert GOOD_V2.startswith("# dm-loop extents v2\n") and "\n2 768 256 0 hole\n" in GOOD_V2

EXTENTS_V2_BAD = {
    "v1_file_as_v2": (GOOD.replace("extents v1", "extents v2"), "a v1 line in a v2 file"),
    "v1_line": (GOOD_V2.replace("\n1 512 256 5056 unwritten", "\n1 512 256 5056"),
                "a v1 line in a v2 file"),
    "missing_column": (GOOD_V2.replace("\n3 1024 768 5568 unwritten", "\n3 1024 5568 unwritten"),
                       "line 7: expected 4 numbers and a state 'index dev_sector sectors "
                       "host_sector state', got fewer\n"),
    "three_fields": (GOOD_V2.replace("\n3 1024 768 5568 unwritten", "\n3 1024 768"), "fewer"),
    "six_fields": (GOOD_V2.replace(" 5568 unwritten", " 5568 unwritten 1"), "more"),
    "unknown_state": (GOOD_V2.replace("5056 unwritten", "5056 frozen"),
                      "unknown extent state 'frozen'"),
    "state_in_capitals": (GOOD_V2.replace("4544 written", "4544 Written"),
                          "unknown extent state 'Written'"),
    "state_as_number": (GOOD_V2.replace("4544 written", "4544 1"), "unknown extent state '1'"),
    "state_prefix": (GOOD_V2.replace("4544 written", "4544 writ"), "unknown extent state"),
    "state_then_number": (GOOD_V2.replace("0 0 512 4544 written", "0 0 512 written 4544"),
                          "field 4"),
    "hole_with_host": (GOOD_V2.replace("2 768 256 0 hole", "2 768 256 5312 hole"),
                       "hole with host_sector 5312"),
    "hole_with_huge_host": (GOOD_V2.replace("2 768 256 0 hole", "2 768 256 18446744073709551615 hole"),
                            "hole with host_sector 18446744073709551615"),
    "unwritten_overflow": (GOOD_V2.replace("5568 unwritten", "36028797018963968 unwritten"),
                           "2^64"),
    "overlap": (GOOD_V2.replace("\n2 768 ", "\n2 700 "), "inside or before"),
    "zero_length": (GOOD_V2.replace("2 768 256 0 hole", "2 768 0 0 hole"), "0 sectors"),
    "index_skip": (GOOD_V2.replace("\n2 768", "\n5 768"), "extent index 5"),
    "count_too_big": (GOOD_V2.replace("extents 5", "extents 6"), "truncated"),
    "no_host": ("# dm-loop extents v2\n0 0 8 100 written\n", "before the '# host' header"),
    "cut_mid_state": (GOOD_V2[:-3], "no newline at the end"),
    "nul_in_state": (GOOD_V2.replace(" hole\n", " ho\x00le\n", 1), "NUL byte"),
}


@pytest.mark.parametrize("case", sorted(EXTENTS_V2_BAD))
def test_bad_v2_extents_file(tool, tmp_path, case):
    data, needle = EXTENTS_V2_BAD[case]
    path = write(tmp_path, case, data)
    p = compare_extents_v2(tool, path, expect=2)
    assert str(path) in p.stderr and needle in p.stderr, p.stderr
    assert p.stdout == "" and len(p.stderr) < 2000
    # show reads the same parser: the info still shown, the table named.
    root = tmp_path / "dbg"
    d = instance_dir(str(root), 0, 0, 1)
    os.makedirs(d)
    for name in ("info", "name", "dev"):
        with open(os.path.join(os.path.dirname(SPARSE_EXTENTS), name)) as src:
            write(tmp_path, os.path.join("dbg", d[len(str(root)) + 1:], name), src.read())
    write(tmp_path, os.path.join("dbg", d[len(str(root)) + 1:], "extents"), data)
    p = tool("show", "xsparse", debugfs=root, expect=2)
    assert "mode:" in p.stdout and "extents" in p.stderr and needle in p.stderr, p.stderr


def test_good_v2_extents_file_is_good(tool, tmp_path):
    p = compare_extents_v2(tool, write(tmp_path, "ok", GOOD_V2), expect=0)
    assert "v2: 1 written, 2 unwritten, 2 holes" in p.stdout
    # Any blanks between the words, a CR before the newline, no column names.
    odd = GOOD_V2.replace(" 5056 unwritten", "\t5056   unwritten").replace("\n", "\r\n")
    odd = "\r\n".join(l for l in odd.split("\r\n") if not l.startswith("# index"))
    compare_extents_v2(tool, write(tmp_path, "odd", odd), expect=0)
    # A v2 table need not have holes or unwritten ranges.
    written = "".join(l.replace(" hole", " written").replace(" unwritten", " written")
                      .replace(" 0 written", " 9000 written")
                      for l in GOOD_V2.splitlines(True))
    p = compare_extents_v2(tool, write(tmp_path, "written", written), expect=1)
    assert "state" in p.stdout


def test_every_truncation_of_a_v2_extents_file(tool, tmp_path):
    data = GOOD_V2.encode()
    accepted = []
    for n in range(len(data)):
        path = write(tmp_path, "cut", data[:n])
        if run_any(tool, compare_extents_v2, path) != 2:
            accepted.append(n)
    assert accepted == [], accepted


# -------------------------------------------------------------- debugfs info

INFO = open(FRAG_INFO).read()

INFO_BAD = {
    "empty": ("", "no 'mode' line"),
    "no_mode": (INFO.replace("mode: block\n", ""), "no 'mode' line"),
    "bad_mode": (INFO.replace("mode: block", "mode: turbo"), "expected 'block' or 'file'"),
    "bad_offset": (INFO.replace("offset: 0", "offset: zero"), "offset"),
    "negative_offset": (INFO.replace("offset: 0", "offset: -4096"), "offset"),
    "huge_sectors": (INFO.replace("dev_sectors: 2048", "dev_sectors: 18446744073709551616"),
                     "dev_sectors"),
    "dup_key": (INFO + "mode: file\n", "given twice"),
    "no_colon": (INFO.replace("reads: 0", "reads 0"), "expected 'key: value'"),
    "bad_host": (INFO.replace("host_dev: 7:0", "host_dev: sda"), "host_dev"),
    "far_offset": (INFO.replace("offset: 0", "offset: 18446744073709551615"), "2^64"),
}


@pytest.mark.parametrize("case", sorted(INFO_BAD))
def test_bad_info_file(tool, tmp_path, case):
    data, needle = INFO_BAD[case]
    path = write(tmp_path, case, data)
    p = tool("compare", "--extents", FRAG_EXTENTS, "--info", path, "--filefrag", FRAG, expect=2)
    assert needle in p.stderr, p.stderr
    if case != "far_offset":
        assert str(path) in p.stderr


def test_new_info_keys_are_accepted(tool, tmp_path):
    """Keys are only ever appended (dm-loop.rst): unknown ones are fine."""
    path = write(tmp_path, "info", INFO + "discards: 0\nerrors: 0\nread_only: 0\nfuture_key: x y\n")
    tool("compare", "--extents", FRAG_EXTENTS, "--info", path, "--filefrag", FRAG, expect=0)


def test_bad_debugfs_directory_names_are_ignored(tool, tmp_path):
    root = tmp_path / "dbg"
    for name in ("dm-1-0", "dm-x-0-1", "dm-1-0-99999999999999999999999", "dm--0-1", "other"):
        os.makedirs(root / "dm-loop" / name)
    p = tool("show", "dm-1", debugfs=root, expect=2)
    assert "no dm-loop target" in p.stderr


# ------------------------------------------------ truncation and damage

def run_any(tool, fn, path):
    p = fn(tool, path)
    assert p.returncode in (0, 1, 2), p
    if p.returncode == 2:
        assert p.stderr.startswith("dmloop-inspect") and "\n" in p.stderr
    return p.returncode


def test_every_truncation_of_an_extents_file(tool, tmp_path):
    data = GOOD.encode()
    accepted = []
    for n in range(len(data)):
        path = write(tmp_path, "cut", data[:n])
        if run_any(tool, compare_extents, path) != 2:
            accepted.append(n)
    # Only cuts at a line end that leave a complete, consistent table.
    assert accepted == [], accepted


def test_every_line_truncation_of_a_filefrag_output(tool, tmp_path):
    lines = frag_text().split("\n")
    for n in range(len(lines) - 1):
        path = write(tmp_path, "cut.txt", "\n".join(lines[:n]) + "\n")
        assert run_any(tool, compare_filefrag, path) == 2


def test_byte_truncations_of_a_filefrag_output(tool, tmp_path):
    data = frag_text().encode()
    full = len(data.rstrip(b"\n"))
    for n in range(0, len(data), 7):
        path = write(tmp_path, "cut.txt", data[:n])
        rc = run_any(tool, compare_filefrag, path)
        # Only whole outputs agree; cut ones may also pass if the cut only
        # loses the trailer's end (e.g. "5 extents foun" is still text).
        assert rc == 2 or n >= full


def test_random_damage(tool, tmp_path):
    rng = random.Random(4242)
    sources = [(frag_text().encode(), compare_filefrag), (GOOD.encode(), compare_extents),
               (GOOD_V2.encode(), compare_extents_v2)]
    for i in range(90):
        data, fn = sources[i % 3]
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b))
            b[pos] = rng.choice(b"0123456789 .:-#\n\x00\xffx")
        path = write(tmp_path, "damaged", bytes(b))
        run_any(tool, fn, path)
