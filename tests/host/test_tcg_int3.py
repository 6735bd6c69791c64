"""The TCG int3 flake: debug/faults.py's tcg_int3_flake() on recorded console
snippets, and debug/vm --rerun-tcg-int3 end to end.

A guest under multi-threaded TCG can die of an int3 that text_poke_bp() put
on a static-key site and took away again (debug/faults.py says why); that
and only that is rerun, once, single-threaded.  Everything else must stay a
fault: the negative cases below are the ones that matter.
"""

import importlib.machinery
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "debug"))
import faults  # noqa: E402

EXIT_FAULT = 90


def explain(p):
    return "exit %d\n--- stdout:\n%s\n--- stderr:\n%s" % (p.returncode, p.stdout[-4000:], p.stderr[-4000:])


def lines(text):
    return text.strip("\n").split("\n")


# 6.12 at boot: the timer interrupt's update_rq_clock() runs into the int3 of
# a jump label (sched_clock_stable) whose patch is done: the site holds its
# nop5 again (0f 1f 44 00 00; RIP is one past the int3, at the 1f).
BOOT_612 = r"""
[    2.113020] clocksource: Switched to clocksource tsc
[    2.121687] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    2.121687] CPU: 1 UID: 0 PID: 0 Comm: swapper/1 Not tainted 6.12.117-dmloop612 #1
[    2.121687] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    2.121687] RIP: 0010:update_rq_clock+0x1e/0x190
[    2.121687] Code: 90 90 90 90 90 90 90 90 90 90 90 90 f3 0f 1e fa 55 53 48 89 fb 48 83 ec 08 8b 87 a0 0b 00 00 a8 04 75 5c 8b 87 78 0b 00 00 0f <1f> 44 00 00 48 63 c0 48 8b 2c c5 a0 c7 e4 81 e8 a9 35 02 00 48 03
[    2.121687] RSP: 0018:ffffc900000f0ee0 EFLAGS: 00000046
[    2.121687] RAX: 0000000000000001 RBX: ffff88807dd2c6c0 RCX: 0000000000000000
[    2.121687] Call Trace:
[    2.121687]  <IRQ>
[    2.121687]  ? die+0x36/0x90
[    2.121687]  ? exc_int3+0x10b/0x110
[    2.121687]  ? asm_exc_int3+0x39/0x40
[    2.121687]  ? update_rq_clock+0x1e/0x190
[    2.121687]  sched_tick+0x4a/0x250
[    2.121687]  update_process_times+0x8c/0xb0
[    2.121687]  tick_nohz_handler+0x8b/0x140
[    2.121687]  </IRQ>
[    2.121687] ---[ end trace 0000000000000000 ]---
[    2.121687] RIP: 0010:update_rq_clock+0x1e/0x190
[    2.121687] Code: 90 90 90 90 90 90 90 90 90 90 90 90 f3 0f 1e fa 55 53 48 89 fb 48 83 ec 08 8b 87 a0 0b 00 00 a8 04 75 5c 8b 87 78 0b 00 00 0f <1f> 44 00 00 48 63 c0 48 8b 2c c5 a0 c7 e4 81 e8 a9 35 02 00 48 03
[    2.121687] Kernel panic - not syncing: Fatal exception in interrupt
[    2.121687] Kernel Offset: disabled
[    2.121687] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---
"""

# 7.2, right after the module was loaded: an unrelated `head` in vfs_read()
# meets the int3 of a site that is a jmp again (e9 ...); process context, so
# the task dies and the guest goes on.
MODLOAD_72 = r"""
[   41.402318] dm-loop: loaded (version 0.4)
[   41.415842] Oops: int3: 0000 [#1] SMP NOPTI
[   41.415842] CPU: 0 UID: 0 PID: 812 Comm: head Tainted: G           OE      7.2.13-dmloop72 #1 PREEMPT(voluntary)
[   41.415842] Tainted: [O]=OOT_MODULE, [E]=UNSIGNED_MODULE
[   41.415842] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[   41.415842] RIP: 0010:vfs_read+0x41/0x370
[   41.415842] Code: 49 89 d6 41 55 49 89 f5 41 54 55 53 48 89 fb 48 83 ec 30 8b 57 44 f6 c2 01 0f 84 f5 01 00 00 f6 c2 04 0f 84 ec 01 00 00 e9 <8a> 02 00 00 48 8b 43 28 48 8b 40 28 48 85 c0 0f 84 c8 01 00 00 4c
[   41.415842] RSP: 0018:ffffc900006b7e28 EFLAGS: 00000246
[   41.415842] Call Trace:
[   41.415842]  <TASK>
[   41.415842]  ? exc_int3+0x10b/0x110
[   41.415842]  ksys_read+0x6d/0xf0
[   41.415842]  do_syscall_64+0x7b/0x190
[   41.415842]  entry_SYSCALL_64_after_hwframe+0x76/0x7e
[   41.415842]  </TASK>
[   41.415842] ---[ end trace 0000000000000000 ]---
[   41.415842] RIP: 0010:vfs_read+0x41/0x370
[   41.415842] Code: 49 89 d6 41 55 49 89 f5 41 54 55 53 48 89 fb 48 83 ec 30 8b 57 44 f6 c2 01 0f 84 f5 01 00 00 f6 c2 04 0f 84 ec 01 00 00 e9 <8a> 02 00 00 48 8b 43 28 48 8b 40 28 48 85 c0 0f 84 c8 01 00 00 4c
[   41.432001] EXT4-fs (vda): mounted filesystem 0d1e... r/w with ordered data mode.
"""

# 6.1's die() header has no "Oops: " in front.
OLD_HEADER_61 = MODLOAD_72.replace("Oops: int3: 0000 [#1] SMP NOPTI", "int3: 0000 [#1] PREEMPT SMP NOPTI")

# A NULL dereference: a real Oops.
NULL_OOPS = r"""
[   55.100001] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   55.100002] #PF: supervisor read access in kernel mode
[   55.100003] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   55.100004] RIP: 0010:dm_loop_map+0x2c/0x1a0 [dm_loop]
[   55.100005] Code: 48 8b 47 08 <48> 8b 40 08 c3
[   55.100006] ---[ end trace 0000000000000000 ]---
"""

# BUG_ON(): kernel BUG at, then the invalid-opcode oops.
BUG_ON = r"""
[   60.200001] kernel BUG at drivers/md/dm-loop-target.c:412!
[   60.200002] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[   60.200003] RIP: 0010:loop_ctr+0x3b2/0x3c0 [dm_loop]
[   60.200004] Code: 0f 0b 0f 0b <0f> 0b 90 90
[   60.200005] ---[ end trace 0000000000000000 ]---
"""

WARNING = r"""
[   70.300001] ------------[ cut here ]------------
[   70.300002] WARNING: CPU: 1 PID: 77 at block/blk-core.c:812 submit_bio_noacct+0x5c/0x4a0
[   70.300003] ---[ end trace 0000000000000000 ]---
"""


def test_the_flake_is_recognised():
    what = faults.tcg_int3_flake(lines(BOOT_612))
    assert what and "update_rq_clock" in what and "0f 1f" in what, what
    what = faults.tcg_int3_flake(lines(MODLOAD_72))
    assert what and "vfs_read" in what and "e9 8a" in what, what
    assert faults.tcg_int3_flake(lines(OLD_HEADER_61))
    # Without timestamps (the console of a kernel booted without printk.time).
    assert faults.tcg_int3_flake([faults.strip_timestamp(l) for l in lines(BOOT_612)])


def test_int3_is_a_fault_on_6_1_too():
    assert faults.is_fault("[    3.1] int3: 0000 [#1] PREEMPT SMP NOPTI")
    assert faults.is_fault("[    3.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")


@pytest.mark.parametrize("log", [NULL_OOPS, BUG_ON, WARNING], ids=["oops", "bug", "warning"])
def test_other_faults_stay_fatal(log):
    assert faults.find_faults(lines(log))
    assert faults.tcg_int3_flake(lines(log)) is None


@pytest.mark.parametrize("extra", [WARNING, NULL_OOPS, BUG_ON,
                                   "[   90.1] watchdog: BUG: soft lockup - CPU#1 stuck for 61s! [kworker/1:2:99]",
                                   "[  130.1] INFO: task head:812 blocked for more than 60 seconds.",
                                   "[   99.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                                   "[   42.0] BUG: KASAN: use-after-free in vfs_read+0x41/0x370"],
                         ids=["warning", "oops", "bug", "lockup", "hung", "rcu-stall", "kasan"])
def test_int3_plus_any_other_fault_stays_fatal(extra):
    assert faults.tcg_int3_flake(lines(MODLOAD_72) + lines(extra)) is None
    assert faults.tcg_int3_flake(lines(extra) + lines(MODLOAD_72)) is None


# 7.2 at boot, two vCPUs at once (the shape of the 2026-12-02 CI console):
# kdevtmpfs on CPU0 and a kworker on CPU1 trap on the same patched jump label
# in set_next_task_fair; the second record follows the first, then the panic.
TWO_CPUS_72 = r"""
[    1.904113] Oops: int3: 0000 [#1] SMP NOPTI
[    1.904113] CPU: 0 UID: 0 PID: 33 Comm: kdevtmpfs Not tainted 7.2.13-dmloop72 #1 PREEMPT(voluntary)
[    1.904113] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[    1.904113] RIP: 0010:set_next_task_fair+0x4ee/0x540
[    1.904113] Code: 48 8b 7d 00 e8 3c 9f ff ff 41 83 c6 01 48 8b 6d 78 48 85 ed 75 e0 e9 2a fd ff ff 0f <1f> 44 00 00 48 8b 83 a8 0b 00 00 48 85 c0 0f 84 52 fd ff ff 48 8b
[    1.904113] RSP: 0018:ffffc900000e3d60 EFLAGS: 00000046
[    1.904113] Call Trace:
[    1.904113]  <TASK>
[    1.904113]  __schedule+0x5c1/0xb90
[    1.904113]  schedule+0x27/0xf0
[    1.904113]  devtmpfs_work_loop+0x2c1/0x2d0
[    1.904113]  </TASK>
[    1.904113] ---[ end trace 0000000000000000 ]---
[    1.904113] RIP: 0010:set_next_task_fair+0x4ee/0x540
[    1.904113] Code: 48 8b 7d 00 e8 3c 9f ff ff 41 83 c6 01 48 8b 6d 78 48 85 ed 75 e0 e9 2a fd ff ff 0f <1f> 44 00 00 48 8b 83 a8 0b 00 00 48 85 c0 0f 84 52 fd ff ff 48 8b
[    1.904113] Oops: int3: 0000 [#2] SMP NOPTI
[    1.904113] CPU: 1 UID: 0 PID: 46 Comm: kworker/1:1 Tainted: G      D            7.2.13-dmloop72 #1 PREEMPT(voluntary)
[    1.904113] RIP: 0010:set_next_task_fair+0x4ee/0x540
[    1.904113] Code: 48 8b 7d 00 e8 3c 9f ff ff 41 83 c6 01 48 8b 6d 78 48 85 ed 75 e0 e9 2a fd ff ff 0f <1f> 44 00 00 48 8b 83 a8 0b 00 00 48 85 c0 0f 84 52 fd ff ff 48 8b
[    1.904113] Call Trace:
[    1.904113]  <IRQ>
[    1.904113]  </IRQ>
[    1.904113] ---[ end trace 0000000000000000 ]---
[    1.904113] Kernel panic - not syncing: Fatal exception in interrupt
[    1.904113] Kernel Offset: disabled
[    1.904113] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---
"""


def test_two_cpus_trapping_at_once_is_the_flake():
    what = faults.tcg_int3_flake(lines(TWO_CPUS_72))
    assert what and "2 int3" in what and "set_next_task_fair" in what, what


def test_a_second_int3_stays_fatal_unless_it_is_a_flake_record_too():
    second = MODLOAD_72.replace("[#1]", "[#2]")
    assert faults.tcg_int3_flake(lines(MODLOAD_72) + lines(second))      # both patched sites
    assert faults.tcg_int3_flake(lines(second)) is None     # not the boot's first oops
    assert faults.tcg_int3_flake(lines(MODLOAD_72) + lines(second.replace("[#2]", "[#3]"))) is None
    stray = second.replace("00 00 e9 <8a> 02", "cc cc cc <cc> cc")
    assert faults.tcg_int3_flake(lines(MODLOAD_72) + lines(stray)) is None
    in_module = second.replace("RIP: 0010:vfs_read+0x41/0x370",
                               "RIP: 0010:dm_loop_map+0x41/0x370 [dm_loop]")
    assert faults.tcg_int3_flake(lines(MODLOAD_72) + lines(in_module)) is None
    # An int3 after an oops of another type: the other oops is [#1].
    after_null = NULL_OOPS + second
    assert faults.tcg_int3_flake(lines(after_null)) is None
    two_cpus_stray = TWO_CPUS_72.replace("ff ff 0f <1f> 44", "ff ff cc <cc> 44", 2)
    assert faults.tcg_int3_flake(lines(two_cpus_stray)) is None


def test_an_int3_still_in_memory_stays_fatal():
    """A stray int3 that is really there (function padding reached by a wild
    jump): the byte before RIP is cc."""
    stray = MODLOAD_72.replace("00 00 e9 <8a> 02", "cc cc cc <cc> cc")
    assert faults.tcg_int3_flake(lines(stray)) is None


def test_int3_in_a_module_or_user_mode_or_without_code_stays_fatal():
    in_module = MODLOAD_72.replace("RIP: 0010:vfs_read+0x41/0x370",
                                   "RIP: 0010:dm_loop_map+0x41/0x370 [dm_loop]")
    assert faults.tcg_int3_flake(lines(in_module)) is None
    user = MODLOAD_72.replace("RIP: 0010:vfs_read+0x41/0x370", "RIP: 0033:0x7f3c1d2e4a1b")
    assert faults.tcg_int3_flake(lines(user)) is None
    no_code = re.sub(r"Code: .*", "Code: Unable to access opcode bytes at 0xffffffff8131a0b7.",
                     MODLOAD_72)
    assert faults.tcg_int3_flake(lines(no_code)) is None
    no_rip = "\n".join(l for l in lines(MODLOAD_72) if "RIP:" not in l)
    assert faults.tcg_int3_flake(lines(no_rip)) is None


def test_a_panic_of_another_kind_stays_fatal():
    other = BOOT_612.replace("Fatal exception in interrupt", "Out of memory and no killable processes...")
    assert faults.tcg_int3_flake(lines(other)) is None


def test_clean_log_is_not_a_flake():
    assert faults.tcg_int3_flake(["[    1.0] Linux version 7.2.13-dmloop72", ""]) is None


def load_vm():
    loader = importlib.machinery.SourceFileLoader("debug_vm", str(REPO / "debug" / "vm"))
    spec = importlib.util.spec_from_loader("debug_vm", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_runner_wants_console_and_dmesg_to_agree(tmp_path):
    """debug/vm's int3_flake(): the console and (when the guest wrote one) the
    dmesg must both show the flake alone."""
    vm = load_vm()
    (tmp_path / "console.log").write_text(MODLOAD_72)
    assert vm.int3_flake(str(tmp_path))
    (tmp_path / "dmesg").write_text(MODLOAD_72)
    assert vm.int3_flake(str(tmp_path))
    (tmp_path / "dmesg").write_text(MODLOAD_72 + WARNING)      # only dmesg saw the WARNING
    assert vm.int3_flake(str(tmp_path)) is None
    (tmp_path / "dmesg").write_text("")
    (tmp_path / "console.log").write_text(BUG_ON)
    assert vm.int3_flake(str(tmp_path)) is None


# The guest writes a recorded flake into its own kernel log (at a level the
# console shows), which the runner cannot tell from the real thing.
INJECT = r"""
echo on > /proc/sys/kernel/printk_devkmsg
sed -n '/Oops: int3/,/end trace/p' "$1" | sed 's/^\[[^]]*\] //; s/^/<2>/' |
    while IFS= read -r l; do printf '%s\n' "$l" > /dev/kmsg; done
"""


def inject_cmd(snippet_file, marker, again):
    """A guest command for two runs, told apart by `marker` (a file in the
    shared repository): the first injects the flake and waits to be killed;
    the second exits 0 at once, after injecting the flake again if `again`."""
    inject = INJECT.strip("\n")
    script = "\n".join(['if [ -e "$2" ]; then', inject if again else "true", "exit 0", "fi",
                        'touch "$2"', inject, "sleep 120", "exit 0"])
    return ["--", "bash", "-c", script, "inject", str(snippet_file), str(marker)]


@pytest.fixture
def snippet():
    build = REPO / "build" / "vm"
    build.mkdir(parents=True, exist_ok=True)
    f = build / ("int3-selftest-%d.log" % os.getpid())
    m = build / ("int3-selftest-%d.marker" % os.getpid())
    f.write_text(MODLOAD_72)
    m.unlink(missing_ok=True)
    yield f, m
    f.unlink()
    m.unlink(missing_ok=True)


def test_rerun_once_after_the_flake(vm, snippet):
    """One flake, then a clean single-threaded rerun: exit 0, and it says so;
    the first run is ended soon after the int3, not left to sleep."""
    p = vm(["--rerun-tcg-int3", "--tcg-thread", "multi"] + inject_cmd(*snippet, again=False))
    assert p.returncode == 0, explain(p)
    assert "RERUN: the guest (multi-threaded TCG" in p.stderr, explain(p)
    assert "vfs_read" in p.stderr and "--tcg-thread single" in p.stderr, explain(p)
    assert "RERUN: exit 0 is the single-threaded rerun's" in p.stderr, explain(p)
    m = re.search(r"got a VM slot after (\d+)s", p.stderr)
    elapsed = p.elapsed - (int(m.group(1)) if m else 0)
    assert elapsed < 110, "the first run was not ended after the int3 (%.0f s)" % elapsed


def test_second_int3_is_fatal_and_other_faults_are_not_rerun(vm, snippet):
    p = vm(["--rerun-tcg-int3"] + inject_cmd(*snippet, again=True))
    assert p.returncode == EXIT_FAULT, explain(p)
    assert p.stderr.count("RERUN: the guest") == 1, explain(p)
    assert "RERUN: exit 90" in p.stderr and "KERNEL FAULT" in p.stderr, explain(p)
    # A WARNING is never rerun.
    p = vm(["--rerun-tcg-int3", "--", "sh", "-c", 'echo "WARNING: dm-loop runner self-test" > /dev/kmsg'])
    assert p.returncode == EXIT_FAULT, explain(p)
    assert "RERUN" not in p.stderr, explain(p)
