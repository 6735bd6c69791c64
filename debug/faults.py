"""Kernel fault patterns, shared by the VM runner (debug/vm) and the guest
pytest scaffolding (tests/guest/conftest.py).

Keep this file dependency-free (stdlib only) and importable from both the
host and the guest: the runner scans the guest console/dmesg with it, the
guest conftest scans /dev/kmsg after every test with it.

A "fault line" is any kernel log line matching FAULT_RE.  find_faults()
returns the matching lines with a little context (the call trace that
usually follows) so a failure report is readable on its own.
"""

import re

# One regular expression per kind of kernel complaint.  Matched with
# re.search against a single log line (timestamp prefixes are harmless).
FAULT_PATTERNS = [
    r"\bBUG:",                              # BUG: kernel NULL pointer, BUG: sleeping function..., BUG: KASAN:
    r"kernel BUG at",                       # BUG_ON()
    r"\bWARNING:",                          # WARN_ON(), lockdep and RCU "WARNING: ..." headers
    r"\bOops\b",                            # Oops: 0000 [#1], Oops: int3
    r": [0-9a-f]{4} \[#\d+\]",              # any die() header; 6.1 prints "int3: 0000 [#1]" without "Oops: "
    r"general protection fault",
    r"stack segment:",
    r"\bdouble fault\b",
    r"\binvalid opcode:",
    r"divide error:",
    r"Unable to handle kernel",
    r"blocked for more than \d+ seconds",   # hung task detector
    r"soft lockup - CPU",
    r"hard LOCKUP",
    r"rcu: INFO: rcu_\w+ (self-)?detected stall",
    r"rcu_\w+ detected stalls",
    r"possible circular locking",           # lockdep
    r"inconsistent lock state",
    r"possible recursive locking",
    r"suspicious RCU usage",
    r"lock held when returning to user space",
    r"held lock freed",
    r"possible irq lock inversion",
    r"bad unlock balance",
    r"\bKASAN:",
    r"\bKFENCE:",
    r"\bUBSAN:",
    r"unreferenced object 0x",              # kmemleak report body
    r"kmemleak: \d+ new suspected memory leaks",
    r"Kernel panic",
    r"list_(add|del) corruption",
    r"refcount_t: ",
    r"\bslab error\b|Slab corruption|Redzone overwritten|Poison overwritten",
]

FAULT_RE = re.compile("|".join("(?:%s)" % p for p in FAULT_PATTERNS))

# Lines that look like faults but are not (add sparingly, with a reason).
IGNORE_PATTERNS = [
    # Printed at boot by kernels with lockdep/KASAN etc. as a banner, not a fault.
    r"\*\* .*debug kernel",
    # The debug kernel announces fault-injection/kmemleak configuration.
    r"kmemleak: Kernel memory leak detector initialized",
]
IGNORE_RE = re.compile("|".join("(?:%s)" % p for p in IGNORE_PATTERNS))

# A line that starts a new, unrelated log record ends a trace context.
_TIMESTAMP_RE = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")


def is_fault(line):
    """True when a single kernel log line reports a kernel fault."""
    return bool(FAULT_RE.search(line)) and not IGNORE_RE.search(line)


def find_faults(lines, after=12):
    """Return a list of (index, line) of fault lines in `lines`."""
    return [(i, l) for i, l in enumerate(lines) if is_fault(l)]


def fault_report(lines, before=2, after=25, max_blocks=8):
    """Format the fault lines in `lines` with context; '' when clean.

    Each fault is shown with `before` lines of context before it and up
    to `after` lines after it (enough for the "Call Trace:" that normally
    follows a WARNING/BUG).  Overlapping blocks are merged; at most
    `max_blocks` blocks are shown.
    """
    hits = [i for i, _ in find_faults(lines)]
    if not hits:
        return ""
    blocks = []
    for i in hits:
        lo, hi = max(0, i - before), min(len(lines), i + after + 1)
        if blocks and lo <= blocks[-1][1]:
            blocks[-1][1] = max(blocks[-1][1], hi)
        else:
            blocks.append([lo, hi])
    hitset = set(hits)
    out = []
    for lo, hi in blocks[:max_blocks]:
        for j in range(lo, hi):
            out.append(("> " if j in hitset else "  ") + lines[j].rstrip("\n"))
        out.append("  ---")
    if len(blocks) > max_blocks:
        out.append("  ... %d more fault block(s) not shown" % (len(blocks) - max_blocks))
    return "\n".join(out)


def strip_timestamp(line):
    return _TIMESTAMP_RE.sub("", line)


# ---------------------------------------------------------------- the TCG int3 flake
#
# Under multi-threaded TCG a guest kernel sometimes dies of an int3 in code
# that has nothing to do with the test (update_rq_clock at boot, vfs_read of
# an unrelated process right after a module load).  Those are the sites that
# text_poke_bp() (static keys / jump labels, static calls) rewrites while the
# other vCPU runs: it puts an int3 on the first byte, writes the rest, writes
# the first byte, with a core sync on every CPU between the steps, and while
# it is at work poke_int3_handler() emulates the instruction for any CPU that
# hits the int3.  A vCPU that executes the int3 after the patch is finished
# (a translation of the page made while the int3 was there and not yet
# dropped by QEMU) finds no patch in progress: exc_int3() calls
# die("int3").  What that leaves in the log is narrow, and tcg_int3_flake()
# recognises exactly that and nothing else:
#
#   1. every die() record of the log is of type int3: "Oops: int3: 0000
#      [#n]" (6.9+) or "int3: 0000 [#n]" (before), numbered #1, #2... in
#      order from the boot's first oops.  More than one happens: two vCPUs
#      holding the same stale translation both trap (7.2 at boot: kdevtmpfs
#      on CPU0 [#1], a kworker on CPU1 [#2], the same set_next_task_fair
#      site);
#   2. each record's RIP is in the kernel's own text ("RIP: 0010:sym+0x../0x.."
#      with no "[module]" after it);
#   3. each record's "Code:" line shows that the byte before RIP (the int3
#      traps with RIP one past itself) is no longer 0xcc: the int3 that
#      trapped is not in memory any more, the site had been patched to its
#      final instruction.  A real stray int3 (function padding reached by a
#      wild jump, an int3 compiled in) is still there and shows "cc <..>";
#   4. every other fault line of the log is an oops's own ending: "Kernel
#      panic - not syncing: Fatal exception[ in interrupt]" or "Attempted to
#      kill the idle task!/init!".  Any other fault anywhere in the log (an
#      Oops of another type, a BUG, a WARNING, a lockup, a stall, KASAN...)
#      and it is not the flake.
#
# debug/vm --rerun-tcg-int3 reruns such a guest once, single-threaded; a
# second int3, or anything else, stays fatal.

_DIE_RE = re.compile(r"(?:\bOops: )?\b([a-z][a-z0-9 ]*?): ([0-9a-f]{4}) \[#(\d+)\]")
_INT3_RE = re.compile(r"(?:\bOops: )?\bint3: [0-9a-f]{4} \[#(\d+)\]")
_OOPS_END_RE = re.compile(r"Kernel panic - not syncing: (?:Fatal exception(?: in interrupt)?|"
                          r"Attempted to kill the idle task!|Attempted to kill init!.*)\s*(?:\]---)?\s*$")
_RIP_RE = re.compile(r"\bRIP: 0010:([A-Za-z_.][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+\s*$")
_CODE_RE = re.compile(r"\bCode: ((?:[0-9a-f]{2} )*)<([0-9a-f]{2})>")
_END_TRACE_RE = re.compile(r"---\[ end trace [0-9a-f]+ \]---")


def tcg_int3_flake(lines):
    """When `lines` (one guest's kernel log) show the multi-threaded TCG int3
    flake and nothing else, return a one-line description of it (the
    function and the bytes at the site); otherwise None.  The rule is in the
    comment above; everything that is not exactly that stays a fault."""
    lines = [strip_timestamp(l.rstrip("\n")) for l in lines]
    hits = [i for i, l in enumerate(lines) if is_fault(l)]
    if not hits:
        return None
    headers = []
    for i in hits:
        l = lines[i]
        m = _INT3_RE.search(l)
        if m and int(m.group(1)) == len(headers) + 1:
            headers.append(i)
        elif _OOPS_END_RE.search(l):
            continue
        else:
            return None     # another die() record, out of order, or any other fault
    if not headers:
        return None
    sites = []
    for header in headers:
        site = _int3_site(lines, header)
        if site is None:
            return None
        sites.append(site)
    if len(sites) == 1:
        return "int3 in %s, the site now holds %s, no other fault" % sites[0]
    return "%d int3 oopses (%s), each site patched already, no other fault" % (
        len(sites), "; ".join("%s, now %s" % s for s in sites))


def _int3_site(lines, header):
    """(function, "xx yy...") for the int3 record at lines[header] when it is
    a flake record (rules 2 and 3), else None."""
    rip = code = None
    for l in lines[header + 1:]:
        if _END_TRACE_RE.search(l) or _DIE_RE.search(l):
            break
        if rip is None and "RIP: " in l:
            m = _RIP_RE.search(l)
            if not m:
                return None     # user mode, a module's text, or no symbol
            rip = m.group(1)
        elif rip is not None and code is None and "Code: " in l:
            m = _CODE_RE.search(l)
            if not m or not m.group(1):
                return None     # "Unable to access opcode bytes": cannot tell
            code = m.group(1).split() + [m.group(2)]
            break
    if rip is None or code is None:
        return None
    if code[-2] == "cc":
        return None             # the int3 is still in memory: a real one
    return rip, "%s %s..." % (code[-2], code[-1])
