"""The man pages: dm-loop(4) and dmloop-inspect(8) render cleanly, index for
apropos, and dm-loop(4) documents every name the module shows a user.

The names are read from the module's sources, so a new reason, message,
info key, debugfs file or sysfs figure fails here until the page has it.
"""
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DM_LOOP_4 = os.path.join(REPO, "module", "dm-loop.4")
INSPECT_8 = os.path.join(REPO, "tools", "dmloop-inspect.8")
PAGES = [DM_LOOP_4, INSPECT_8]
IDS = ["dm-loop.4", "dmloop-inspect.8"]
TARGET_C = os.path.join(REPO, "module", "dm-loop-target.c")
DEBUGFS_C = os.path.join(REPO, "module", "dm-loop-debugfs.c")
ENV = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")


def _need(tool, package):
    if not shutil.which(tool):
        pytest.skip("%s is not installed (Debian package %s: make deps)" % (tool, package))


def _source(path):
    with open(path) as f:
        return f.read()


def _function(src, name):
    """The body of the C function `name` (from its header to the closing brace
    in column 0)."""
    m = re.search(r"^\w[^\n]*\b%s\([^)]*\)\n\{\n(.*?)^\}" % re.escape(name), src, re.M | re.S)
    assert m, "function %s not found in the module's sources" % name
    return m.group(1)


@pytest.fixture(scope="module")
def dm_loop_4_text():
    """dm-loop(4) as plain text: wide, unhyphenated, no bold or underline."""
    _need("groff", "groff-base")
    p = subprocess.run(["groff", "-man", "-Tutf8", "-rHY=0", "-rLL=250n", "-P-cbou", DM_LOOP_4],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    return p.stdout.replace("\u2212", "-").replace("\u2010", "-")


def _word(name):
    """A regex for `name` as a whole word (a name ending in ':' is a prefix)."""
    return r"(?<![\w-])%s%s" % (re.escape(name), "" if name.endswith(":") else r"(?![\w-])")


def _documented(text, names):
    """The names missing from text."""
    return [n for n in names if not re.search(_word(n), text)]


@pytest.mark.parametrize("warnings", ["-wall", "-ww"])
@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_groff_renders_without_warnings(page, warnings):
    """groff -man -Tutf8 prints no warning for the page, with -wall and with
    -ww (every warning: -wall leaves out undefined macros, strings and
    registers)."""
    _need("groff", "groff-base")
    p = subprocess.run(["groff", "-man", "-Tutf8", warnings, "-z", page],
                       capture_output=True, text=True, env=ENV)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 0 and not lines, "\n".join(lines) or "groff exit %d" % p.returncode


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_man_renders_without_warnings(page):
    """`MANWIDTH=80 man --warnings -l` renders the page with no warning (lines
    that cannot be broken or adjusted at 80 columns included)."""
    _need("man", "man-db")
    p = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True, env=ENV)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 0 and not lines, "\n".join(lines) or "man exit %d" % p.returncode
    assert "NAME" in p.stdout and "SEE ALSO" in p.stdout, p.stdout[:2000]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_name_section_indexes(page):
    """lexgrog (what mandb runs) parses the NAME line, so `apropos` and
    `whatis` find the installed page."""
    _need("lexgrog", "man-db")
    p = subprocess.run(["lexgrog", page], capture_output=True, text=True, env=ENV)
    name = os.path.basename(page).rsplit(".", 1)[0]
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r': "%s - \S' % re.escape(name), p.stdout), p.stdout


def test_versions_agree():
    """dm-loop(4)'s header, dkms.conf and the module (DM_LOOP_VERSION) name one version."""
    module = re.search(r'^#define DM_LOOP_VERSION "([^"]+)"',
                       _source(os.path.join(REPO, "module", "dm-loop.h")), re.M).group(1)
    page = re.search(r'^\.TH DM-LOOP 4 "[^"]*" "dm-loop ([^"]+)"', _source(DM_LOOP_4), re.M)
    dkms = re.search(r'^PACKAGE_VERSION="([^"]+)"', _source(os.path.join(REPO, "dkms.conf")), re.M)
    assert page and dkms, "no version in dm-loop.4's .TH line or in dkms.conf"
    assert (page.group(1), dkms.group(1)) == (module, module), \
        "dm-loop.4 says %s, dkms.conf %s, the module %s" % (page.group(1), dkms.group(1), module)


def test_documents_every_reason(dm_loop_4_text):
    """Every file-mode reason token the module can print is in dm-loop(4)'s
    Reasons list."""
    body = re.search(r"loop_reason_names\[[^\]]*\] = \{(.*?)\};", _source(TARGET_C), re.S)
    assert body, "loop_reason_names[] not found"
    names = re.findall(r'"([^"]+)"', body.group(1))
    assert len(names) >= 5, names
    names = [n + ":" if n == "unmapped" else n for n in names if n != "-"]
    section = dm_loop_4_text.split("\n   Reasons\n", 1)[-1].split("\nSTATUS\n", 1)[0]
    assert not _documented(section, names), _documented(section, names)


def test_documents_every_optional_argument(dm_loop_4_text):
    """Every optional table argument the constructor accepts is in dm-loop(4)."""
    names = re.findall(r'strcasecmp\(arg, "(\w+)"\)', _function(_source(TARGET_C), "loop_parse_opts"))
    assert len(names) >= 3, names
    assert not _documented(dm_loop_4_text, names), _documented(dm_loop_4_text, names)


def test_documents_every_message(dm_loop_4_text):
    """Every `dmsetup message` verb the target accepts is in dm-loop(4)."""
    names = re.findall(r'strcasecmp\(argv\[0\], "(\w+)"\)', _function(_source(TARGET_C), "loop_message"))
    assert len(names) >= 2, names
    missing = [n for n in names
               if not re.search(r"dmsetup\s+message\s+device\s+sector\s+%s\b" % n, dm_loop_4_text)]
    assert not missing, missing


def test_documents_every_info_key_in_order(dm_loop_4_text):
    """The `info` keys (debugfs and `message info`) are listed in dm-loop(4) in
    the order the module prints them."""
    body = _function(_source(TARGET_C), "loop_format_info")
    fmt = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)).replace("\\n", "\n")
    keys = re.findall(r"(\w+): %", fmt)
    assert len(keys) >= 10, keys
    para = re.search(r"\binfo\s+key:\s+value\s+lines(.*?)\n\s*\n", dm_loop_4_text, re.S)
    assert para, "no `info` entry (\"key: value lines...\") in dm-loop(4)"
    assert not _documented(para.group(1), keys), _documented(para.group(1), keys)
    pos = [re.search(_word(k), para.group(1)).start() for k in keys]
    assert pos == sorted(pos), "info keys out of order: page has %s" % \
        [k for _, k in sorted(zip(pos, keys))]


def test_documents_every_debugfs_file(dm_loop_4_text):
    """Every file the module creates in its debugfs directories is in dm-loop(4)."""
    names = re.findall(r'debugfs_create_file\("(\w+)"', _source(DEBUGFS_C))
    assert len(names) >= 4, names
    section = dm_loop_4_text.split("\nDEBUGFS\n", 1)[-1].split("\nSYSFS\n", 1)[0]
    missing = [n for n in names if not re.search(r"^\s+%s\b" % n, section, re.M)]
    assert not missing, missing


def test_documents_every_sysfs_figure(dm_loop_4_text):
    """Every module parameter (/sys/module/dm_loop/parameters/) is in dm-loop(4)."""
    names = re.findall(r"^module_param(?:_cb|_named)?\((\w+),", _source(TARGET_C), re.M)
    assert len(names) >= 4, names
    section = dm_loop_4_text.split("\nSYSFS\n", 1)[-1].split("\nLIMITS\n", 1)[0]
    assert not _documented(section, names), _documented(section, names)


def test_dm_loop_4_and_inspect_8_refer_to_each_other():
    """Each page names the other in SEE ALSO."""
    assert re.search(r"^\.BR dmloop\\-inspect \(8\)", _source(DM_LOOP_4), re.M), \
        "dm-loop.4 SEE ALSO lacks dmloop-inspect(8)"
    assert re.search(r"^\.BR dm\\-loop \(4\)", _source(INSPECT_8), re.M), \
        "dmloop-inspect.8 SEE ALSO lacks dm-loop(4)"
