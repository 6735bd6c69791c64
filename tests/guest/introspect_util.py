"""Read dm-loop's view of itself, and the file's layout to check it against.

- parse_extents() and parse_info() read the debugfs `extents` and `info`
  formats documented in module/dm-loop.rst (a stable interface).  They are
  strict: anything the documentation does not allow raises FormatError, so
  a test that reads a file through them also checks its format.
- documented_info_keys() and documented_extents_headers() read the formats
  out of module/dm-loop.rst itself, so the documentation and the code
  cannot drift apart unnoticed.
- instances() lists the debugfs directories, optionally of one dm device.
- fiemap() and expected_extents() turn the backing file's FIEMAP into the
  extent table dm-loop should show.
- Fragmented files: dmloop.fragment_free_space() / write_fragmented().

Stdlib only: importing this on the host is harmless.
"""

import collections
import fcntl
import os
import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RST = REPO / "module" / "dm-loop.rst"
DEBUGFS_MOUNT = Path("/sys/kernel/debug")
DEBUGFS = DEBUGFS_MOUNT / "dm-loop"
PARAMS = Path("/sys/module/dm_loop/parameters")
SYSFS_FIGURES = ("block_devices", "file_devices", "total_extents", "table_bytes")
INSTANCE_FILES = ("extents", "info", "name", "dev")
EXTENT_BYTES = 24           # sizeof(struct loop_extent): three sector_t
SECTOR = 512
MiB = 1 << 20


class FormatError(ValueError):
    """A debugfs file does not follow its documented format."""


# ------------------------------------------------------------ extents

Extent = collections.namedtuple("Extent", "dev_sector sectors host_sector")
ExtentTable = collections.namedtuple("ExtentTable", "host extents")

EXTENTS_MAGIC = "# dm-loop extents v1"
EXTENTS_HOST = re.compile(r"# host (\d+):(\d+) extents (\d+)")
EXTENTS_COLUMNS = "# index dev_sector sectors host_sector"


def parse_extents(text):
    """Parse an `extents` file: ExtentTable(host=(major, minor), extents=[Extent...]).

    Checks the three header lines, that the count in the header is the
    number of lines, that indexes run 0, 1, 2..., and that the extents
    follow each other from device sector 0 without gap or overlap."""
    if not text.endswith("\n"):
        raise FormatError("extents: does not end with a newline: %r" % text[-40:])
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise FormatError("extents: fewer than three header lines: %r" % text)
    if lines[0] != EXTENTS_MAGIC:
        raise FormatError("extents: first line %r, want %r" % (lines[0], EXTENTS_MAGIC))
    m = EXTENTS_HOST.fullmatch(lines[1])
    if not m:
        raise FormatError("extents: second line %r is not '# host M:m extents N'" % lines[1])
    if lines[2] != EXTENTS_COLUMNS:
        raise FormatError("extents: third line %r, want %r" % (lines[2], EXTENTS_COLUMNS))
    host = (int(m.group(1)), int(m.group(2)))
    count = int(m.group(3))
    body = lines[3:]
    if len(body) != count:
        raise FormatError("extents: header says %d extents, %d lines follow" % (count, len(body)))
    extents = []
    next_sector = 0
    for i, line in enumerate(body):
        fields = line.split(" ")
        if len(fields) != 4 or not all(re.fullmatch(r"0|[1-9][0-9]*", f) for f in fields):
            raise FormatError("extents: line %d %r is not four decimal numbers" % (i + 4, line))
        index, dev_sector, sectors, host_sector = map(int, fields)
        if index != i:
            raise FormatError("extents: line %d has index %d, want %d" % (i + 4, index, i))
        if dev_sector != next_sector:
            raise FormatError("extents: extent %d starts at device sector %d, want %d"
                              % (i, dev_sector, next_sector))
        if sectors == 0:
            raise FormatError("extents: extent %d is empty" % i)
        extents.append(Extent(dev_sector, sectors, host_sector))
        next_sector = dev_sector + sectors
    return ExtentTable(host, extents)


# ------------------------------------------------------------ info

def parse_info(text):
    """Parse an `info` text: an ordered dict key -> value (str).

    Each line is `key: value`; keys are lower-case words, never repeated."""
    if not text.endswith("\n"):
        raise FormatError("info: does not end with a newline: %r" % text[-40:])
    out = collections.OrderedDict()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        key, sep, value = line.partition(": ")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise FormatError("info: line %d %r is not 'key: value'" % (n, line))
        if key in out:
            raise FormatError("info: key %r repeated on line %d" % (key, n))
        out[key] = value
    return out


# ------------------------------------------------------------ the documentation

def _literal_block_after(marker, rst=RST):
    """The indented literal block of the first paragraph ending in '::'
    after the line `marker` (an rst definition-list term) in the rst."""
    lines = Path(rst).read_text().split("\n")
    i = lines.index(marker)
    while not lines[i].rstrip().endswith("::"):
        i += 1
    i += 1
    while not lines[i].strip():
        i += 1
    indent = len(lines[i]) - len(lines[i].lstrip())
    block = []
    while i < len(lines) and (not lines[i].strip() or
                              len(lines[i]) - len(lines[i].lstrip()) >= indent):
        block.append(lines[i][indent:])
        i += 1
    while block and not block[-1]:
        block.pop()
    return block


def documented_info_keys(rst=RST):
    """The `info` keys module/dm-loop.rst lists, in its order."""
    return [line.partition(":")[0] for line in _literal_block_after("``info``", rst)]


def documented_extents_headers(rst=RST):
    """The header lines module/dm-loop.rst shows for `extents`."""
    return [line for line in _literal_block_after("``extents``", rst) if line.startswith("#")]


def documented_sysfs_figures(rst=RST):
    """The names in the sysfs section of module/dm-loop.rst (``name``)."""
    text = Path(rst).read_text()
    section = text.split("\nsysfs\n=====\n", 1)[1]
    return re.findall(r"``([a-z_]+)``", section)


# ------------------------------------------------------------ debugfs directories

Instance = collections.namedtuple("Instance", "path minor start id")
INSTANCE_NAME = re.compile(r"dm-(\d+)-(\d+)-(\d+)")


def instances(minor=None):
    """debugfs instance directories (of dm minor `minor`, or all), sorted by
    minor, start sector and id."""
    out = []
    if not DEBUGFS.is_dir():
        return out
    for name in os.listdir(DEBUGFS):
        m = INSTANCE_NAME.fullmatch(name)
        if not m:
            raise FormatError("unexpected entry %r in %s" % (name, DEBUGFS))
        inst = Instance(DEBUGFS / name, *map(int, m.groups()))
        if minor is None or inst.minor == minor:
            out.append(inst)
    return sorted(out, key=lambda i: (i.minor, i.start, i.id))


def dm_minor(name):
    """Minor number of /dev/mapper/<name>."""
    return os.minor(os.stat("/dev/mapper/%s" % name).st_rdev)


def read(path):
    with open(path) as f:
        return f.read()


def info_of(inst):
    return parse_info(read(inst.path / "info"))


def extents_of(inst):
    return parse_extents(read(inst.path / "extents"))


def sysfs_figures():
    """The module-wide figures from /sys/module/dm_loop/parameters/ as ints."""
    return {k: int(read(PARAMS / k)) for k in SYSFS_FIGURES}


# ------------------------------------------------------------ FIEMAP

FS_IOC_FIEMAP = 0xC020660B          # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_HEAD = struct.Struct("=QQIIII")          # struct fiemap
FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")     # struct fiemap_extent
FiemapExtent = collections.namedtuple("FiemapExtent", "logical physical length flags")


def fiemap(path, batch=256):
    """The file's extents from FS_IOC_FIEMAP (bytes), after syncing it, as
    filefrag does: in batches, restarting after the last one returned."""
    out = []
    start = 0
    fd = os.open(str(path), os.O_RDONLY)
    try:
        while True:
            buf = bytearray(FIEMAP_HEAD.size + batch * FIEMAP_EXTENT.size)
            FIEMAP_HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start,
                                  FIEMAP_FLAG_SYNC, 0, batch, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = FIEMAP_HEAD.unpack_from(buf, 0)[3]
            if not mapped:
                return out
            for i in range(mapped):
                f = FIEMAP_EXTENT.unpack_from(buf, FIEMAP_HEAD.size + i * FIEMAP_EXTENT.size)
                e = FiemapExtent(f[0], f[1], f[2], f[5])
                out.append(e)
                if e.flags & FIEMAP_EXTENT_LAST:
                    return out
            start = out[-1].logical + out[-1].length
    finally:
        os.close(fd)


def expected_extents(fm, offset, dev_sectors):
    """The extent table dm-loop should show for a device of `dev_sectors`
    sectors at byte `offset` of a file with FIEMAP extents `fm`: the file's
    extents clipped to the device, in 512-byte sectors of the host device,
    device sectors counted from the offset, contiguous runs merged.
    Raises ValueError where the device covers no extent (a hole)."""
    end = offset + dev_sectors * SECTOR
    out = []
    covered = offset
    for e in sorted(fm, key=lambda e: e.logical):
        lo, hi = max(e.logical, offset), min(e.logical + e.length, end)
        if lo >= hi:
            continue
        if lo != covered:
            raise ValueError("FIEMAP has a hole at byte %d" % covered)
        run = Extent((lo - offset) // SECTOR, (hi - lo) // SECTOR,
                     (e.physical + lo - e.logical) // SECTOR)
        last = out[-1] if out else None
        if (last and last.dev_sector + last.sectors == run.dev_sector and
                last.host_sector + last.sectors == run.host_sector):
            out[-1] = last._replace(sectors=last.sectors + run.sectors)
        else:
            out.append(run)
        covered = hi
    if covered != end:
        raise ValueError("FIEMAP covers bytes up to %d of %d" % (covered, end))
    return out
