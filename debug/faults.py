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
