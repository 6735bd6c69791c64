"""Real clients on dm-loop devices: udev, LVM, LUKS2, partitions, RAID1.

People put loop devices under the rest of the storage stack, so each test
here puts Debian's own program on a dm-loop device, once in block mode and
once in file mode, with systemd-udevd running and Debian's dm, lvm2, mdadm
and kpartx rules in force (the rest of the guest suite runs without udev,
DM_DISABLE_UDEV=1).  Each checks the data end to end: a pattern written
through the top of the stack, the stack torn down, read back through a
fresh stack and from the backing file by another path.

Block mode: a fully written file on ext4.  File mode: a sparse file on the
same ext4 (reason hole:...), the commonest image there is.
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

import dmloop
from filemode_util import status_fields

MiB = 1 << 20
MODES = ["block", "file"]
KEY = b"dm-loop client test key\n"


# ------------------------------------------------------------ udev

def _udevd_pids():
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink("/proc/%s/exe" % p).endswith("/systemd-udevd"):
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def settle():
    dmloop.run(["udevadm", "settle", "-t", "60"])


def cookies():
    """The udev cookies (semaphores) libdevmapper still waits on: none, after
    every command, when udev completes them."""
    out = dmloop.dmsetup("udevcookies").stdout.strip().splitlines()
    return [line for line in out[1:] if line.strip()]


@pytest.fixture(scope="module")
def udevd():
    """systemd-udevd running with Debian's rules, DM_DISABLE_UDEV unset,
    for this module's tests; stopped (and the variable restored) after."""
    udevd = shutil.which("systemd-udevd") or "/lib/systemd/systemd-udevd"
    if not os.path.exists(udevd):
        pytest.skip("systemd-udevd is not installed (Debian package udev)")
    if _udevd_pids():
        pytest.skip("a udevd is already running in the guest")
    old = os.environ.pop("DM_DISABLE_UDEV", None)
    dmloop.run([udevd, "--daemon"])
    try:
        dmloop.run(["udevadm", "trigger", "--action=add", "--type=subsystems"])
        dmloop.run(["udevadm", "trigger", "--action=add", "--type=devices"])
        settle()
        yield
    finally:
        dmloop.run(["udevadm", "settle", "-t", "60"], check=False)
        dmloop.run(["udevadm", "control", "--exit"], check=False)
        for _ in range(100):
            if not _udevd_pids():
                break
            time.sleep(0.1)
        if old is not None:
            os.environ["DM_DISABLE_UDEV"] = old


@pytest.fixture(autouse=True)
def _no_cookie_left(udevd):
    yield
    left = cookies()
    if left:
        dmloop.dmsetup("udevcomplete_all", "-y", check=False)
        pytest.fail("udev cookies were left waiting (udevcomplete_all was needed): %s" % left,
                    pytrace=False)


# ------------------------------------------------------------ backing files, devices

def backing_file(mp, name, size, mode):
    """A file of `size` bytes on the ext4 at `mp` that dm-loop maps in `mode`:
    every block written (block), or sparse (file)."""
    path = Path(mp) / name
    if mode == "block":
        zero = bytes(MiB)
        with open(path, "wb") as f:
            for _ in range(size // MiB):
                f.write(zero)
            os.fsync(f.fileno())
    else:
        with open(path, "wb") as f:
            f.truncate(size)
    return path


def loop_create(name, path, mode):
    size = path.stat().st_size
    dev = dmloop.create(name, "0 %d loop %s 0" % (size // 512, path))
    st = status_fields(name)
    assert st["mode"] == mode, "%s over %s came up %s (%s), not %s" % (
        name, path, st["mode"], st["reason"], mode)
    return dev


def loop_remove(name):
    dmloop.remove(name)
    settle()


@pytest.fixture
def ext4(scratch_fs, udevd):
    return scratch_fs("ext4")


def write_pattern(dev, size, seed, offset=0):
    dmloop.write_random(str(dev), size, seed, offset=offset, direct=True, fsync=True)


def check_pattern(path, size, seed, offset=0, what=""):
    """The pattern of `seed` is at `offset` of `path` (a device, or the
    backing file read with O_DIRECT: block mode writes past its page cache)."""
    try:
        dmloop.verify_random(str(path), size, seed, offset=offset, direct=True)
    except AssertionError as e:
        raise AssertionError("%s %s" % (e, what)) from None


def sha_tree(mp):
    """{relative path: sha256} of every regular file under mp but lost+found."""
    out = {}
    for root, dirs, files in os.walk(mp):
        dirs[:] = [d for d in dirs if d != "lost+found"]
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(mp))] = dmloop.sha256_of(str(p), p.stat().st_size)
    return out


def fill_fs(mp, seed, files=4, size=2 * MiB):
    for i in range(files):
        dmloop.write_random(str(Path(mp) / ("f%d" % i)), size, seed + i, fsync=True)
    return sha_tree(mp)


def need_target(target, module):
    dmloop.modprobe(module)
    names = [line.split()[0] for line in dmloop.dmsetup("targets").stdout.splitlines() if line]
    if target not in names:
        pytest.skip("this kernel has no dm %s target (%s)" % (target, module))


def need_tool(tool, package):
    if not shutil.which(tool):
        pytest.skip("%s is not installed (Debian package %s)" % (tool, package))


def mount(dev, mp, *opts):
    os.makedirs(mp, exist_ok=True)
    args = ["mount"] + (["-o", ",".join(opts)] if opts else []) + [str(dev), str(mp)]
    dmloop.run(args)


def umount(mp):
    dmloop.umount(str(mp))


# ------------------------------------------------------------ udev

def _links(name):
    return [Path("/dev/mapper") / name, Path("/dev/disk/by-id") / ("dm-name-" + name)]


@pytest.mark.parametrize("mode", MODES)
def test_udev_links_follow_the_device(ext4, mode):
    """dmsetup create/remove with udev: the cookie completes (no
    udevcomplete_all), /dev/mapper/<name> and by-id/dm-name-<name> point at
    the dm node, the filesystem's by-uuid link appears once mkfs closes the
    device, `udevadm info` names the device, and every link goes with it."""
    name = "cl-udev-" + mode
    path = backing_file(ext4, "udev.img", 64 * MiB, mode)
    loop_create(name, path, mode)
    settle()
    node = Path("/dev") / Path(os.readlink("/dev/mapper/" + name)).name
    for link in _links(name):
        assert link.is_symlink(), "udev made no %s" % link
        assert link.resolve() == node.resolve(), "%s -> %s, not %s" % (link, link.resolve(), node)
    dmloop.run(["mkfs.ext4", "-q", "/dev/mapper/" + name])
    settle()
    uuid = dmloop.run(["blkid", "-s", "UUID", "-o", "value", "/dev/mapper/" + name]).stdout.strip()
    by_uuid = Path("/dev/disk/by-uuid") / uuid
    assert uuid and by_uuid.is_symlink() and by_uuid.resolve() == node.resolve(), \
        "no by-uuid link %s for the filesystem on the device" % by_uuid
    info = dmloop.run(["udevadm", "info", "/dev/mapper/" + name]).stdout
    assert "E: DM_NAME=%s\n" % name in info, info
    assert "S: mapper/%s\n" % name in info, info
    assert not cookies()
    loop_remove(name)
    for link in _links(name) + [by_uuid]:
        assert not os.path.lexists(link), "%s is left after the device went" % link
    assert not node.exists(), "%s is left after the device went" % node


def test_udev_dmlosetup(ext4, tmp_path):
    """dmsetup's losetup personality with udev: `dmlosetup loopN file` and
    `dmlosetup -d loopN`, the links come and go, no cookie is left."""
    dmsetup = shutil.which("dmsetup")
    dml = tmp_path / "dmlosetup"
    dml.symlink_to(dmsetup)
    path = backing_file(ext4, "dml.img", 16 * MiB, "block")
    name = "loopcl0"
    dmloop.run([str(dml), name, str(path)])
    dmloop.created_devices.append(name)
    settle()
    assert status_fields(name)["mode"] == "block"
    for link in _links(name):
        assert link.is_symlink(), "udev made no %s" % link
    write_pattern("/dev/mapper/" + name, 4 * MiB, 21)
    dmloop.run([str(dml), "-d", name])
    dmloop.created_devices.remove(name)
    settle()
    for link in _links(name):
        assert not os.path.lexists(link), "%s is left after dmlosetup -d" % link
    check_pattern(path, 4 * MiB, 21, what="(the file, after dmlosetup -d)")


# ------------------------------------------------------------ LVM

def lvm(*args, **kw):
    return dmloop.run(["lvm"] + [str(a) for a in args], **kw)


@pytest.fixture
def lvm_cleanup():
    vgs = []
    yield vgs
    for vg in vgs:
        lvm("vgchange", "-an", vg, check=False)
    settle()


@pytest.mark.parametrize("mode", MODES)
def test_lvm_linear_and_thin(ext4, mode, lvm_cleanup):
    """pvcreate/vgcreate on a dm-loop device, a linear LV with a raw pattern
    and a thin pool with a thin LV holding ext4; vgchange -an, the dm-loop
    device removed and created again, vgchange -ay: both intact, and the
    linear LV's pattern is in the file where the PV puts it."""
    need_tool("lvm", "lvm2")
    need_target("thin-pool", "dm-thin-pool")
    need_tool("thin_check", "thin-provisioning-tools")
    name, vg = "cl-lvm-" + mode, "clvg" + mode
    path = backing_file(ext4, "lvm.img", 256 * MiB, mode)
    dev = loop_create(name, path, mode)
    lvm("pvcreate", "-y", dev)
    lvm("vgcreate", "-y", "-s", "4M", vg, dev)
    lvm_cleanup.append(vg)
    lvm("lvcreate", "-y", "-L", "32M", "-n", "lin", vg)
    lvm("lvcreate", "-y", "--type", "thin-pool", "-L", "96M", "-n", "pool", vg)
    lvm("lvcreate", "-y", "-V", "160M", "--thinpool", "pool", "-n", "thin", vg)
    settle()
    lin, thin = Path("/dev") / vg / "lin", Path("/dev") / vg / "thin"
    assert lin.exists() and thin.exists(), "udev made no /dev/%s links" % vg
    write_pattern(lin, 32 * MiB, 31)
    dmloop.run(["mkfs.ext4", "-q", str(thin)])
    mp = Path("/mnt/cl-thin")
    mount(thin, mp)
    files = fill_fs(mp, 32)
    umount(mp)
    # Where the linear LV lives in the PV, hence in the file.
    rep = json.loads(lvm("pvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                         "-o", "pe_start", dev).stdout)
    pe_start = int(rep["report"][0]["pv"][0]["pe_start"])
    seg = json.loads(lvm("lvs", "--reportformat", "json", "-o", "seg_pe_ranges",
                         "%s/lin" % vg).stdout)["report"][0]["lv"][0]["seg_pe_ranges"]
    m = re.fullmatch(r"\S+:(\d+)-(\d+)", seg.strip())
    assert m, seg
    lin_off = pe_start + int(m.group(1)) * 4 * MiB

    lvm("vgchange", "-an", vg)
    settle()
    loop_remove(name)
    check_pattern(path, 32 * MiB, 31, offset=lin_off, what="at the linear LV's place")
    lvm("pvscan", "--cache", check=False)
    assert lvm("vgs", vg, check=False).returncode != 0, "%s is still seen with its PV gone" % vg

    loop_create(name, path, mode)
    settle()
    lvm("vgchange", "-ay", vg)
    settle()
    check_pattern(lin, 32 * MiB, 31, what="(the linear LV after vgchange -an/-ay)")
    mount(thin, mp)
    try:
        assert sha_tree(mp) == files, "the thin LV's files changed"
    finally:
        umount(mp)
    lvm("vgchange", "-an", vg)
    settle()
    loop_remove(name)


# ------------------------------------------------------------ LUKS2

def cryptsetup(*args, **kw):
    return dmloop.run(["cryptsetup"] + [str(a) for a in args], **kw)


@pytest.mark.parametrize("mode", MODES)
def test_luks2(ext4, mode, tmp_path):
    """cryptsetup luksFormat (LUKS2) and open on a dm-loop device, ext4
    inside; close, the device removed and created again, reopen: the files
    are intact; the file itself opens with cryptsetup (over /dev/loop) to the
    same files, and holds none of the plaintext."""
    need_tool("cryptsetup", "cryptsetup-bin")
    need_target("crypt", "dm-crypt")
    name, crypt = "cl-luks-" + mode, "cl-luks-open-" + mode
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    path = backing_file(ext4, "luks.img", 64 * MiB, mode)
    dev = loop_create(name, path, mode)
    # A cheap key derivation: the test is about the data path, not the KDF.
    cryptsetup("luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
               "--pbkdf-force-iterations", "1000", "--key-file", keyfile, dev)
    cryptsetup("open", "--key-file", keyfile, dev, crypt)
    dmloop.created_devices.append(crypt)
    settle()
    top = Path("/dev/mapper") / crypt
    dmloop.run(["mkfs.ext4", "-q", str(top)])
    mp = Path("/mnt/cl-luks")
    mount(top, mp)
    plain = b"dm-loop LUKS2 plaintext marker " * 4096
    (mp / "marker").write_bytes(plain)
    files = fill_fs(mp, 41)
    umount(mp)
    cryptsetup("close", crypt)
    dmloop.created_devices.remove(crypt)
    settle()
    loop_remove(name)

    dmloop.drop_caches()
    data = path.read_bytes()
    assert data[:6] == b"LUKS\xba\xbe", "no LUKS header at the start of the file"
    assert plain[:64] not in data, "the plaintext is in the file"

    dev = loop_create(name, path, mode)
    cryptsetup("open", "--key-file", keyfile, dev, crypt)
    dmloop.created_devices.append(crypt)
    settle()
    mount(top, mp, "ro")
    try:
        assert sha_tree(mp) == files, "the files inside LUKS changed"
    finally:
        umount(mp)
    cryptsetup("close", crypt)
    dmloop.created_devices.remove(crypt)
    loop_remove(name)

    # From the file, by cryptsetup's own way (it attaches /dev/loop).
    dmloop.modprobe("loop")
    cryptsetup("open", "--readonly", "--key-file", keyfile, path, crypt)
    dmloop.created_devices.append(crypt)
    try:
        mount(top, mp, "ro")
        try:
            assert sha_tree(mp) == files, "the file opened over /dev/loop holds other files"
        finally:
            umount(mp)
    finally:
        cryptsetup("close", crypt)
        dmloop.created_devices.remove(crypt)
        settle()


# ------------------------------------------------------------ partitions

def kpartx(*args):
    return dmloop.run(["kpartx", "-s"] + [str(a) for a in args])


@pytest.fixture
def kpartx_cleanup():
    devs = []
    yield devs
    for dev in devs:
        if os.path.exists(dev):
            dmloop.run(["kpartx", "-s", "-d", str(dev)], check=False)
    settle()


@pytest.mark.parametrize("mode", MODES)
def test_gpt_partitions_with_kpartx(ext4, mode, kpartx_cleanup):
    """A GPT disk image (sfdisk) with ext4 and ext2 partitions on a dm-loop
    device; kpartx -a exposes them, both mount and take files; kpartx -d,
    remove, and again through a fresh stack; each partition read from the
    file at its own offset (over /dev/loop) holds the same files."""
    need_tool("kpartx", "kpartx")
    need_tool("sfdisk", "fdisk")
    name = "clpart" + mode
    path = backing_file(ext4, "gpt.img", 192 * MiB, mode)
    dev = loop_create(name, path, mode)
    kpartx_cleanup.append(dev)
    dmloop.run(["sfdisk", "-q", str(dev)], input="label: gpt\n,64M,L\n,96M,L\n")
    out = kpartx("-a", "-v", dev).stdout
    parts = re.findall(r"add map (\S+) \(\d+:\d+\): 0 (\d+) linear \S+ (\d+)", out)
    assert len(parts) == 2, "kpartx -a gave %r" % out
    settle()
    fstypes = ["ext4", "ext2"]
    trees = []
    for (pname, _, _), fs in zip(parts, fstypes):
        p = Path("/dev/mapper") / pname
        assert p.is_symlink(), "no %s after kpartx -a" % p
        dmloop.run(["mkfs." + fs, "-q", str(p)])
        mp = Path("/mnt") / pname
        mount(p, mp)
        trees.append(fill_fs(mp, 51 + len(trees)))
        umount(mp)
    kpartx("-d", dev)
    settle()
    for pname, _, _ in parts:
        assert not os.path.lexists("/dev/mapper/" + pname), "%s left after kpartx -d" % pname
    loop_remove(name)

    dev = loop_create(name, path, mode)
    kpartx("-a", dev)
    settle()
    for (pname, _, _), tree in zip(parts, trees):
        mp = Path("/mnt") / pname
        mount("/dev/mapper/" + pname, mp, "ro")
        try:
            assert sha_tree(mp) == tree, "%s's files changed" % pname
        finally:
            umount(mp)
    kpartx("-d", dev)
    settle()
    loop_remove(name)

    dmloop.modprobe("loop")
    for (pname, length, start), tree in zip(parts, trees):
        loopdev = dmloop.run(["losetup", "--find", "--show", "--read-only",
                              "--offset", str(int(start) * 512),
                              "--sizelimit", str(int(length) * 512), str(path)]).stdout.strip()
        mp = Path("/mnt") / pname
        try:
            mount(loopdev, mp, "ro")
            try:
                assert sha_tree(mp) == tree, "%s read from the file holds other files" % pname
            finally:
                umount(mp)
        finally:
            dmloop.run(["losetup", "-d", loopdev])


# ------------------------------------------------------------ RAID1

def mdadm(*args, **kw):
    return dmloop.run(["mdadm"] + [str(a) for a in args], **kw)


def md_detail(md):
    return mdadm("--detail", md).stdout


def md_wait(md, timeout=300):
    """Until the array is idle (no resync or recovery), then its detail."""
    mdadm("--wait", md, check=False, timeout=timeout)
    detail = md_detail(md)
    assert re.search(r"State : (clean|active)\s*$", detail, re.M), detail
    return detail


def md_check(md, half, what):
    """Once the array is idle with both legs active, it holds the two
    halves written through it (seeds 61 and 62)."""
    detail = md_wait(md)
    assert "Active Devices : 2" in detail, detail
    check_pattern(md, half, 61, what="(%s, first half)" % what)
    check_pattern(md, half, 62, offset=half, what="(%s, second half)" % what)


def md_data_offset(leg):
    m = re.search(r"Data Offset : (\d+) sectors", mdadm("--examine", leg).stdout)
    assert m
    return int(m.group(1)) * 512


def md_holders(devs):
    """The one md array holding every device of `devs`, or None."""
    held = set()
    for dev in devs:
        node = os.path.basename(os.path.realpath(dev))
        held |= {h for h in os.listdir("/sys/block/%s/holders" % node) if h.startswith("md")}
    assert len(held) <= 1, "the legs are held by %s" % held
    return held.pop() if held else None


@pytest.fixture
def md_cleanup():
    yield
    if os.path.exists("/proc/mdstat") and re.search(r"^md\d+ :", open("/proc/mdstat").read(), re.M):
        mdadm("--stop", "--scan", check=False)
        settle()


def need_raid1():
    need_tool("mdadm", "mdadm")
    dmloop.modprobe("raid1")
    if not os.path.exists("/proc/mdstat") or "raid1" not in open("/proc/mdstat").read():
        pytest.skip("this kernel has no md raid1 personality")


@pytest.mark.parametrize("mode", MODES)
def test_md_raid1(ext4, mode, md_cleanup):
    """mdadm --create RAID1 over two dm-loop devices; the resync completes;
    a pattern written; one leg failed, removed, more written, re-added (the
    write-intent bitmap's quick recovery); both legs' files hold all of it;
    stopped, the legs removed and created again, assembled: intact."""
    need_raid1()
    legs = ["clmd%s%d" % (mode, i) for i in (0, 1)]
    paths = [backing_file(ext4, "leg%d.img" % i, 64 * MiB, mode) for i in (0, 1)]
    devs = [loop_create(n, p, mode) for n, p in zip(legs, paths)]
    md = "/dev/md/clraid" + mode
    mdadm("--create", md, "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
          "--bitmap=internal", "--homehost=dmloop", *devs)
    try:
        detail = md_wait(md)
        assert "Active Devices : 2" in detail, detail
        size = dmloop.device_size(md)
        half = (size // 2) // MiB * MiB
        write_pattern(md, half, 61)
        mdadm(md, "--fail", devs[1])
        mdadm(md, "--remove", devs[1])
        assert "Active Devices : 1" in md_detail(md)
        write_pattern(md, half, 62, offset=half)
        mdadm(md, "--re-add", devs[1])
        md_check(md, half, "re-added")
    finally:
        mdadm("--stop", md, check=False)
        settle()
    for leg, path in zip(devs, paths):
        off = md_data_offset(leg)
        check_pattern(path, half, 61, offset=off, what="(leg, first half)")
        check_pattern(path, half, 62, offset=off + half, what="(leg, second half)")
    for n in legs:
        loop_remove(n)

    devs = [loop_create(n, p, mode) for n, p in zip(legs, paths)]
    settle()
    # udev's 64-md-raid-assembly.rules assemble the array as its legs come
    # (mdadm --incremental, under a name of its own): use that array if so.
    held = md_holders(devs)
    if held:
        md = "/dev/" + held
    else:
        mdadm("--assemble", md, *devs)
    try:
        md_check(md, half, "assembled again")
    finally:
        mdadm("--stop", md, check=False)
        settle()
    for n in legs:
        loop_remove(n)
