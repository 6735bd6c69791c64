# SPDX-License-Identifier: GPL-2.0
"""dmloop-inspect on the host: no kernel module, fixtures instead.

Every case runs against the normal binary and the ASan/UBSan one
(tools/dmloop-inspect-asan); any sanitizer report fails the case.
Fixtures: fixtures/filefrag/ (real filefrag 1.47 outputs captured by
fixtures/capture.sh) and fixtures/debugfs/ (debugfs trees consistent with
them, pointed at with DMLOOP_DEBUGFS).
"""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
FF = os.path.join(ROOT, "fixtures", "filefrag")
DBG = os.path.join(ROOT, "fixtures", "debugfs")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")


@pytest.fixture(scope="session", params=["dmloop-inspect", "dmloop-inspect-asan"])
def binary(request):
    subprocess.run(["make", "-s", "-C", TOOLS, request.param], check=True)
    return os.path.join(TOOLS, request.param)


class Tool:
    def __init__(self, binary):
        self.binary = binary

    def __call__(self, *args, debugfs=None, expect=None):
        env = dict(os.environ)
        env.pop("DMLOOP_DEBUGFS", None)
        if debugfs:
            env["DMLOOP_DEBUGFS"] = debugfs
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=99"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=99"
        p = subprocess.run([self.binary] + [str(a) for a in args], env=env,
                           capture_output=True, text=True, timeout=60)
        for mark in SANITIZER_MARKS:
            assert mark not in p.stderr, p.stderr
        assert p.returncode != 99, p.stderr
        assert "Segmentation fault" not in p.stderr
        assert p.returncode >= 0, "killed by signal %d" % -p.returncode
        if expect is not None:
            assert p.returncode == expect, (p.returncode, p.stdout, p.stderr)
        return p


@pytest.fixture
def tool(binary):
    return Tool(binary)


def ff(name):
    return os.path.join(FF, name)


def tree(name):
    return os.path.join(DBG, name)


def test_help_and_version(tool):
    p = tool("--help", expect=0)
    assert "compare" in p.stdout and "report" in p.stdout
    p = tool("--version", expect=0)
    assert p.stdout.strip() == "dmloop-inspect 1.0.0"


def test_compare_agrees_with_filefrag(tool):
    p = tool("compare", "frag", "--no-fiemap", "--filefrag", ff("ext4-4k-frag.txt"),
             debugfs=tree("ext4-4k"), expect=0)
    assert "agree" in p.stdout


def test_compare_shifted_range_differs(tool):
    p = tool("compare", "reload", "--no-fiemap", "--filefrag", ff("ext4-4k-contig.txt"),
             debugfs=tree("ext4-4k"), expect=1)
    assert "shifted" in p.stdout


def test_compare_json_parses(tool):
    p = tool("compare", "--json", "frag", "--no-fiemap", "--filefrag",
             ff("ext4-4k-frag.txt"), debugfs=tree("ext4-4k"), expect=0)
    assert json.loads(p.stdout)["verdict"] == "agree"
