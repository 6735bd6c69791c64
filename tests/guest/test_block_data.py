"""Block mode moves data to the right place on every supported filesystem.

Each case writes through the dm device and checks the file's bytes at the
offset afterwards, then the reverse: writes the file and reads it back
through the device.  Both directions use O_DIRECT on the device, so the
data really goes through the extent table and the host device.
"""

import os

import pytest

import dmloop

MiB = 1 << 20

# (filesystem, mkfs arguments, file size): 64 MiB where the issue names it.
FILESYSTEMS = [
    pytest.param("ext4", ("-b", "4096"), 64 * MiB, id="ext4-4k"),
    pytest.param("xfs", (), 64 * MiB, id="xfs"),
    pytest.param("ext4", ("-b", "1024"), 16 * MiB, id="ext4-1k"),
    pytest.param("ext2", (), 16 * MiB, id="ext2"),
    pytest.param("ext3", (), 16 * MiB, id="ext3"),
]


def block_size(path):
    return os.statvfs(path).f_bsize


def make_backing_file(path, size, seed):
    dmloop.write_random(path, size, seed=seed, fsync=True)


def dev_table(path, dev_bytes, offset, opts=""):
    return "0 %d loop %s %d%s" % (dev_bytes // 512, path, offset, opts)


@pytest.mark.parametrize("fstype,mkfs_args,size", FILESYSTEMS)
@pytest.mark.parametrize("offset_blocks", [0, 1, 3], ids=["off0", "off1blk", "off3blk"])
def test_device_to_file(fstype, mkfs_args, size, offset_blocks):
    """Data written through the device is in the file at the offset afterwards."""
    with dmloop.mounted_fs(fstype, mkfs_args=mkfs_args) as mp:
        img = mp / "img"
        make_backing_file(img, size, seed=1)
        offset = offset_blocks * block_size(mp)
        dev_bytes = size - offset
        dev = dmloop.create("blk0", dev_table(img, dev_bytes, offset))
        try:
            assert dmloop.status("blk0").split()[3] == "block"
            dmloop.write_random(dev, dev_bytes, seed=2, direct=True)
        finally:
            dmloop.remove("blk0")
        dmloop.drop_caches()
        dmloop.verify_random(img, dev_bytes, seed=2, offset=offset)
        # The bytes before the offset are untouched.
        if offset:
            assert dmloop.read_bytes(img, offset) == dmloop.random_bytes(size, 1)[:offset]


@pytest.mark.parametrize("fstype,mkfs_args,size", FILESYSTEMS)
@pytest.mark.parametrize("offset_blocks", [0, 3], ids=["off0", "off3blk"])
def test_file_to_device(fstype, mkfs_args, size, offset_blocks):
    """Data written to the file reads back through the device."""
    with dmloop.mounted_fs(fstype, mkfs_args=mkfs_args) as mp:
        img = mp / "img"
        make_backing_file(img, size, seed=3)
        offset = offset_blocks * block_size(mp)
        dev_bytes = (size - offset) // MiB * MiB
        dev = dmloop.create("blk1", dev_table(img, dev_bytes, offset))
        try:
            assert dmloop.status("blk1").split()[3] == "block"
            expect = dmloop.random_bytes(size, 3)[offset:offset + dev_bytes]
            assert dmloop.read_bytes(dev, dev_bytes, direct=True) == expect
        finally:
            dmloop.remove("blk1")


def test_fragmented_file_maps_every_extent():
    """A file scattered over single free blocks maps as that many extents;
    bios crossing extent ends are split and the data lands where it should."""
    # -m 0: no root reserve, which root's writes could use contiguously.
    with dmloop.mounted_fs("ext4", dev=dmloop.scratch_disk(2),
                           mkfs_args=("-b", "4096", "-m", "0")) as mp:
        blk = 4096
        nblocks = 1024
        dmloop.fragment_free_space(mp, 2 * nblocks, blk)
        img = mp / "img"
        size = nblocks * blk
        make_backing_file(img, size, seed=8)
        dev = dmloop.create("frag", dev_table(img, size, 0))
        try:
            fields = dmloop.status("frag").split()
            assert fields[3] == "block"
            assert int(fields[4]) > nblocks // 4, "file should be scattered: %s" % fields
            dmloop.write_random(dev, size, seed=9, direct=True)
            splits = int(dmloop.status("frag").split()[8])
            assert splits > 0, "writes across extent ends must have been split"
        finally:
            dmloop.remove("frag")
        dmloop.drop_caches()
        dmloop.verify_random(img, size, seed=9)
