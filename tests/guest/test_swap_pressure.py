"""Encrypted swap on dm-loop under memory pressure (swap_pressure.py says
what the stack and the load are).

Runs in its own small guest (make check: `make swap-result`, 512 MiB of
RAM), where RAM runs out for real: the load must finish within its budget,
read back every page it pushed out, and the kernel must log no OOM kill and
no hung task (the conftest fault check fails the test on the latter too).
"""

import pytest

import dmloop
import swap_pressure

# The guest must be small for RAM to run out (make swap-result gives 512M).
MAX_RAM = 1 << 30


def test_encrypted_swap_on_dm_loop_under_memory_pressure(dmloop_module):
    for tool in ("cryptsetup", "mkswap", "swapon"):
        if not dmloop.run(["which", tool], check=False).stdout.strip():
            pytest.skip("%s is not installed" % tool)
    dmloop.modprobe("dm-crypt")
    if "crypt" not in dmloop.dmsetup("targets").stdout:
        pytest.skip("this kernel has no dm crypt target")
    mem = swap_pressure.meminfo()["MemTotal"]
    if mem > MAX_RAM:
        pytest.skip("the guest has %d MiB of RAM: memory would not run out "
                    "(make swap-result boots a 512 MiB guest)" % (mem >> 20))
    disk = dmloop.scratch_disk(0)
    res = swap_pressure.run("dmloop", disk, budget=300)
    print("swap-pressure-result:", res)
    hog = res["hog"]
    assert hog is not None and res["exit"] == 0, "the load died: %s" % res
    assert not hog["timed_out"], "the load did not finish in its budget: %s" % res
    assert hog["bad_pages"] == 0, "pages read back from swap differ: %s" % res
    assert not res["oom_kills"], "the OOM killer ran: %s" % res["oom_kills"]
    assert not res["hung_tasks"], "hung tasks: %s" % res["hung_tasks"]
    assert res["peak_swap"] > res["swap_total"] // 2, \
        "the load never used most of the swap: %s" % res
