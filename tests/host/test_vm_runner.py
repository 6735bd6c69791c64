"""debug/vm, the QEMU runner every kernel test depends on, checked from the host.

Slow: each case boots the guest under TCG (about 6-15 s a boot); checks are
combined per boot to keep the count small.  They run in `make check`.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "debug"))
import faults  # noqa: E402

EXIT_FAULT, EXIT_TIMEOUT, EXIT_BOOT, EXIT_NO_FAULT = 90, 91, 92, 93
KMSG_LINE = re.compile(r"^\[\s*\d+\.\d+\]", re.M)


def explain(p):
    return "exit %d\n--- stdout:\n%s\n--- stderr:\n%s" % (p.returncode, p.stdout[-4000:], p.stderr[-4000:])


def test_help_documents_exit_codes():
    p = subprocess.run([str(REPO / "debug" / "vm"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for code in ("90", "91", "92", "93"):
        assert re.search(r"^\s*%s\s" % code, p.stdout, re.M), "exit code %s not documented" % code
    for opt in ("--kernel", "--disk", "--mem", "--smp", "--timeout", "--boot-timeout", "--share", "--append",
                "--expect-fault", "shell"):
        assert opt in p.stdout


def test_fault_patterns():
    for line in ("[   12.3] WARNING: CPU: 0 PID: 1 at fs/x.c:1 f+0x1/0x2",
                 "BUG: kernel NULL pointer dereference, address: 0000000000000008",
                 "Oops: 0000 [#1] PREEMPT SMP NOPTI",
                 "general protection fault, probably for non-canonical address",
                 "INFO: task dd:123 blocked for more than 60 seconds.",
                 "WARNING: possible circular locking dependency detected",
                 "BUG: KASAN: use-after-free in foo+0x1/0x2",
                 "unreferenced object 0xffff888003a1b000 (size 64):",
                 "UBSAN: shift-out-of-bounds in fs/x.c:1:2",
                 "Kernel panic - not syncing: Fatal exception",
                 "WARNING: suspicious RCU usage",
                 "kernel BUG at drivers/md/dm.c:100!"):
        assert faults.is_fault(line), line
    for line in ("EXT4-fs (vda): mounted filesystem with ordered data mode",
                 "device-mapper: ioctl: 4.47.0-ioctl (2022-07-28) initialised",
                 "vm-guest: command exited with status 0"):
        assert not faults.is_fault(line), line


def test_make_does_not_export_kernel(repo):
    """`make check KERNEL=7.2` names a prebuilt kernel; debug/vm would read an
    exported KERNEL as a kernel file, in every guest the recipes start."""
    probe = "probe: ; @echo \"env:$${KERNEL-unset} make:$(KERNEL)\""
    for how in (["make", "KERNEL=7.2"], ["env", "KERNEL=7.2", "make"]):
        p = subprocess.run(how + ["-s", "--no-print-directory", "-C", str(repo), "--eval", probe, "probe"],
                           capture_output=True, text=True)
        assert p.returncode == 0, explain(p)
        assert p.stdout.strip() == "env:unset make:7.2", (how, p.stdout)


def test_status_output_and_disks(vm):
    """One boot: exit status passes through, stdout/stderr reach ours separately and
    free of kernel messages, scratch disks have the requested sizes, the guest
    environment is as documented, and it all works with stdin closed."""
    script = r"""
        echo MARKER-stdout
        echo MARKER-stderr >&2
        echo "hello" > /dev/kmsg
        for d in /sys/block/vd*; do echo "SIZE ${d##*/} $(cat $d/size)"; done
        echo "CWD $(pwd)"
        echo "ENV $DMLOOP_VM $DM_DISABLE_UDEV $HOME"
        [ -e /dev/fd/0 ] && echo DEVFD-ok
        [ -d /sys/kernel/debug/block ] && echo DEBUGFS-ok
        [ "$(cat /proc/sys/kernel/hung_task_timeout_secs)" = 60 ] && echo HUNG-ok
        ip -o link show lo | grep -q 'state UNKNOWN\|UP' && echo LO-ok
        [ -e /dev/mapper/control ] && echo DM-ok
        touch /etc/written-in-guest && echo OVERLAY-ok
        t=build/vm/guest-write-test.$$; echo x > $t && rm $t && echo REPO-RW-ok
        [ -t 1 ] || echo NOT-A-TTY
        exit 7
    """
    p = vm(["--disk", "64M", "--disk", "128M", "--", "bash", "-c", script])
    assert p.returncode == 7, explain(p)
    out = p.stdout
    assert "MARKER-stdout" in out and "MARKER-stdout" not in p.stderr, explain(p)
    assert "MARKER-stderr" in p.stderr and "MARKER-stderr" not in out, explain(p)
    assert not KMSG_LINE.search(out), "kernel messages leaked into stdout:\n" + out
    assert "SIZE vda 131072" in out and "SIZE vdb 262144" in out, explain(p)
    assert "CWD %s" % REPO in out, explain(p)
    assert "ENV 1 1 /root" in out, explain(p)
    for word in ("DEVFD-ok", "DEBUGFS-ok", "HUNG-ok", "LO-ok", "DM-ok", "OVERLAY-ok",
                 "REPO-RW-ok", "NOT-A-TTY"):
        assert word in out, "%s missing\n%s" % (word, explain(p))
    assert not os.path.exists("/etc/written-in-guest"), "the guest wrote through to the host root"


def test_fault_detector(vm):
    """The required self-test: put a WARNING: line into the guest kernel log; the
    runner must fail with the fault status and show the line."""
    cmd = ["--", "sh", "-c", 'echo "WARNING: dm-loop runner self-test" > /dev/kmsg']
    p = vm(cmd)
    assert p.returncode == EXIT_FAULT, explain(p)
    assert "WARNING: dm-loop runner self-test" in p.stderr, explain(p)


def test_expect_fault_inverts(vm):
    p = vm(["--expect-fault", "--", "sh", "-c",
                'echo "WARNING: dm-loop runner self-test" > /dev/kmsg; exit 3'])
    assert p.returncode == 0, explain(p)
    assert "WARNING: dm-loop runner self-test" in p.stderr, explain(p)


def test_timeout(vm):
    p = vm(["--timeout", "20", "--", "sleep", "1000"])
    assert p.returncode == EXIT_TIMEOUT, explain(p)
    m = re.search(r"got a VM slot after (\d+)s", p.stderr)    # queued behind other guests
    elapsed = p.elapsed - (int(m.group(1)) if m else 0)
    assert 19 <= elapsed < 50, "took %.1f s" % elapsed
    assert "TIMEOUT" in p.stderr


def test_boot_stall_is_rerun_once_then_fails(vm):
    """A guest that has not started the command within --boot-timeout is
    killed and booted once more (the command never ran); a second stall is
    exit 92.  No guest boots in 1 s, so both stall."""
    p = vm(["--boot-timeout", "1", "--timeout", "120", "--", "touch", "/tmp/never"])
    assert p.returncode == EXIT_BOOT, explain(p)
    assert p.stderr.count("BOOT STALL") == 2, explain(p)
    assert "RERUN: the guest stalled in boot" in p.stderr, explain(p)
    assert "stalled in boot twice" in p.stderr, explain(p)
    assert p.elapsed < 60, "took %.1f s" % p.elapsed


SELFTEST = r'''
import os, subprocess
import pytest
import dmloop

# Any stock device-mapper module stands in for the module under test.
os.environ["DMLOOP_KO"] = subprocess.run(["modinfo", "-n", "dm-flakey"], capture_output=True,
                                         text=True, check=True).stdout.strip()


def test_module_loaded(dmloop_module):
    assert dmloop_module.name == "dm_flakey"
    assert os.path.exists("/sys/module/dm_flakey")


def test_raw_data_roundtrip():
    d = dmloop.scratch_disks()
    assert d == ["/dev/vda"]
    dmloop.write_random(d[0], 3 << 20, seed=5, offset=4096, direct=True)
    dmloop.verify_random(d[0], 3 << 20, seed=5, offset=4096, direct=True)
    assert dmloop.read_bytes(d[0], 1 << 20, 4096) == dmloop.random_bytes(1 << 20, 5)
    with pytest.raises(AssertionError):
        dmloop.verify_random(d[0], 1 << 20, seed=6, offset=4096)


def test_fs_and_dmsetup(scratch_fs):
    mp = scratch_fs("ext4")
    f = mp / "img"
    dmloop.write_random(f, 2 << 20, seed=1, fsync=True)
    dev = dmloop.create("selftest0", "0 8192 zero")
    assert dmloop.table("selftest0") == "0 8192 zero"
    assert dmloop.read_bytes(dev, 4096, direct=True) == bytes(4096)
    dmloop.remove("selftest0")
    assert not dmloop.exists("selftest0")
    dmloop.verify_random(f, 2 << 20, seed=1, direct=True)


def test_leftover_device_is_removed():
    dmloop.create("selftest-leak", "0 8 zero")


def test_no_leftover():
    assert "selftest-leak" not in dmloop.dm_devices()


@pytest.fixture(scope="module")
def shared_dev():
    dmloop.create("selftest-shared", "0 8 zero")
    yield "selftest-shared"
    dmloop.remove("selftest-shared")


def test_shared_device_1(shared_dev):
    assert dmloop.exists(shared_dev)


def test_shared_device_2(shared_dev):
    assert dmloop.exists(shared_dev)


def test_kernel_warning_fails_the_test():
    pos = dmloop.kmsg_pos()
    dmloop.kmsg("WARNING: guest scaffolding self-test")
    assert any("scaffolding self-test" in l for l in dmloop.kmsg_since(pos))
'''


def test_guest_scaffolding(vm):
    """One boot: tests/guest/conftest.py and dmloop.py work in the guest (module
    fixture with a stock module, data helpers, filesystem and dmsetup helpers,
    leftover cleanup, and a kernel WARNING failing the test that caused it)."""
    name = "_vm_selftest_%d.py" % os.getpid()     # not test_*.py: never collected by others
    path = REPO / "tests" / "guest" / name
    path.write_text(SELFTEST)
    try:
        p = vm(["--disk", "256M", "--", "sh", "-c",
                    "/usr/bin/python3 -m pytest -p no:cacheprovider -v tests/guest/%s; "
                    "echo PYTEST-RC=$?; grep -c '^dm_flakey ' /proc/modules" % name])
    finally:
        path.unlink()
    out = p.stdout
    assert p.returncode == EXIT_FAULT, explain(p)       # the WARNING, also seen by the runner
    for t in ("test_module_loaded", "test_raw_data_roundtrip", "test_fs_and_dmsetup",
              "test_leftover_device_is_removed", "test_no_leftover", "test_shared_device_1",
              "test_shared_device_2"):
        assert re.search(r"%s PASSED" % t, out), "%s did not pass\n%s" % (t, explain(p))
    assert re.search(r"test_kernel_warning_fails_the_test FAILED", out), explain(p)
    assert "kernel fault in the guest log" in out and "guest scaffolding self-test" in out, explain(p)
    assert "PYTEST-RC=1" in out, explain(p)
    assert out.rstrip().endswith("\n0"), "dm_flakey still loaded after the session\n" + explain(p)


KERNEL_612 = "/work/shared/kernels/6.12/linux-image-6.12.117-dmloop612_6.12.117-3_amd64.deb"


@pytest.mark.skipif(not os.path.exists(KERNEL_612), reason="no prebuilt 6.12 kernel package here")
def test_other_kernel_from_deb(vm):
    """A kernel .deb with virtio/9p/overlay built in boots (the initramfs insmods
    just fail) and the guest sees that kernel's modules."""
    p = vm(["--kernel", KERNEL_612, "--", "sh", "-c",
                "uname -r; ls /lib/modules/$(uname -r)/modules.dep && echo MODDIR-ok"])
    assert p.returncode == 0, explain(p)
    assert "6.12.117-dmloop612" in p.stdout and "MODDIR-ok" in p.stdout, explain(p)
