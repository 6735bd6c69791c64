"""dm-loop installs like a kernel module: `make install` / `make uninstall`
(debug/install) and DKMS (`make dkms-install` / `make dkms-remove`).

After an install, `modprobe dm-loop` works and the kernel loads the module
by itself when a `loop` table is first loaded (dm core's
request_module("dm-loop")); after an uninstall every installed file is gone,
nothing else is, and the module cannot be found.  DKMS builds the module
from the sources for the running kernel, in the guest.

The guest's root is the host's under a throw-away overlay, so installing
there changes nothing on the host.  Each test that needs the module not
loaded unloads the session's module and loads it back (insmod $DMLOOP_KO)
afterwards, leaving the session as it found it.

The module tree.  depmod reads every module of the kernel (4023 files,
396 MiB for Debian's 6.1), over 9p under TCG: 5 s on the host, minutes in
the guest, and make install, make uninstall, dkms install and dkms remove
each run it.  So by default (make check) the tests that run depmod see, at
/lib/modules/<kver>, a small copy of the kernel's tree bind-mounted over the
real one (see `module_tree`): the kernel's own modules.order, modules.builtin
and modules.builtin.modinfo, its build and source links, and of its modules
those dm-loop uses (modinfo's depends, which modpost took from the symbols
dm-loop imports) with their dependencies.  debug/install, dkms, depmod,
modprobe and the kernel's request_module -> /sbin/modprobe run unchanged
against it.  What they compute for dm-loop is what they compute over the
whole tree: depmod resolves a module's dependencies from the symbols the
modules in the tree export, and every module exporting a symbol dm-loop uses
is in the small tree; dm-loop's aliases come from dm-loop.ko itself; the
builtin indexes come from the same modules.builtin files.  The other
modules' entries are missing, and no test here looks at them.
test_depmod_ran checks dm-loop's line against the stock modules.dep.
DMLOOP_INSTALL_TREE=full (make check-install) runs everything on the real
tree instead, depmod over every module included.
"""

import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

import dmloop

REPO = Path(__file__).resolve().parents[2]
# DMLOOP_INSTALL_SCRIPT: another copy of debug/install (to see these tests
# fail against a broken one).
INSTALL = Path(os.environ.get("DMLOOP_INSTALL_SCRIPT", str(REPO / "debug" / "install")))
KVER = os.uname().release
MODDIR = Path("/lib/modules") / KVER
MANIFEST = Path("/var/lib/dm-loop/install-manifest")
PREFIX = Path("/usr/local")
INSTALLED = {
    "module": MODDIR / "updates" / "dm-loop.ko",
    "inspect": PREFIX / "sbin" / "dmloop-inspect",
    "inspect.8": PREFIX / "share/man/man8/dmloop-inspect.8",
    "dm-loop.4": PREFIX / "share/man/man4/dm-loop.4",
}
DMLOSETUP = PREFIX / "sbin" / "dmlosetup"
DKMS_KO = MODDIR / "updates" / "dkms" / "dm-loop.ko"
MODNAME = "dm_loop"
# "small" (default): depmod's tests run on a small copy of the module tree
# (module_tree); "full": on the real one, depmod over every module.
TREE = os.environ.get("DMLOOP_INSTALL_TREE", "small")


def _package_version():
    with open(REPO / "dkms.conf") as f:
        return re.search(r'^PACKAGE_VERSION="([^"]+)"', f.read(), re.M).group(1)


# ------------------------------------------------------------ preconditions

def _root_is_overlay():
    with open("/proc/self/mounts") as f:
        return any(l.split()[1] == "/" and l.split()[2] == "overlay" for l in f)


@pytest.fixture(scope="module", autouse=True)
def _throwaway_system(dmloop_module):
    """Install only where it is harmless and where the result means something."""
    if dmloop_module is None:
        pytest.skip("DMLOOP_KO=none: no module under test to install")
    if not _root_is_overlay():
        pytest.skip("the guest's / is not a throw-away overlay: installing would change the host")
    if os.path.ismount(str(MODDIR)):
        pytest.skip("%s is bind-mounted from the host (a prebuilt kernel): installing "
                    "would change the host's copy; runs on the stock kernel" % MODDIR)
    found = dmloop.run(["modinfo", "-n", "dm-loop"], check=False)
    if found.returncode == 0:
        pytest.skip("a dm-loop module is already installed for %s (%s): these tests "
                    "need a system without one" % (KVER, found.stdout.strip()))
    if shutil.which("dmlosetup"):
        pytest.skip("a dmlosetup is already on PATH (%s)" % shutil.which("dmlosetup"))
    if MANIFEST.exists():
        pytest.skip("%s exists: dm-loop is installed already" % MANIFEST)


# ------------------------------------------------------------ the module tree

def _module_name(path):
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", os.path.basename(path))
    return base.replace("-", "_")


def _modules_dep(moddir):
    """{module name: (path, [dependency paths])} from moddir's modules.dep."""
    out = {}
    with open(Path(moddir) / "modules.dep") as f:
        for line in f:
            path, _, deps = line.partition(":")
            if path:
                out[_module_name(path)] = (path, deps.split())
    return out


def _needed_modules(ko, dep):
    """The paths of the modules `ko` needs, as depmod over the whole tree
    lists them in modules.dep: the modules modpost found it imports symbols
    from (modinfo's depends) and their own dependencies (modules.dep lists
    those transitively already)."""
    depends = dmloop.run(["modinfo", "-F", "depends", ko]).stdout.strip()
    out = set()
    for name in filter(None, depends.split(",")):
        name = name.replace("-", "_")
        assert name in dep, "%s depends on %s, which is not in %s/modules.dep" % (ko, name, MODDIR)
        path, deps = dep[name]
        out.add(path)
        out.update(deps)
    return out


@pytest.fixture(scope="module")
def module_tree(dmloop_module, _throwaway_system):
    """/lib/modules/<kver> for the tests that run depmod; yields the set of
    paths modules.dep must list as dm-loop's dependencies.

    Unless DMLOOP_INSTALL_TREE=full: a small copy of the kernel's module tree
    (why it gives dm-loop what the whole tree gives: the module docstring),
    made in /tmp with one depmod, is bind-mounted over the real tree until
    the end of this file's tests, then unmounted: the real tree, untouched,
    is back for the rest of the session."""
    real = _modules_dep(MODDIR)
    needed = _needed_modules(dmloop_module.path, real)
    if TREE == "full":
        yield needed
        return
    assert TREE == "small", "DMLOOP_INSTALL_TREE=%s: small or full" % TREE
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="dmloop-modtree.", dir="/tmp"))
    tree = root / MODDIR.relative_to("/")
    tree.mkdir(parents=True)
    for n in sorted(os.listdir(MODDIR)):
        src = MODDIR / n
        if src.is_symlink():                    # build, source
            os.symlink(os.readlink(src), tree / n)
        elif n in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            shutil.copy2(src, tree / n)         # depmod's input besides the modules
    for rel in needed:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODDIR / rel, tree / rel)
    # The system before the install: the tree's indexes, as the kernel
    # package's postinst leaves them (depmod over its modules).
    dmloop.run(["depmod", "-b", str(root), KVER])
    dmloop.run(["mount", "--bind", str(tree), str(MODDIR)])
    print("module_tree: %d of %d modules, ready in %.1f s"
          % (len(needed), len(real), time.monotonic() - t0))
    try:
        yield needed
    finally:
        dmloop.umount(str(MODDIR))
        shutil.rmtree(str(root), ignore_errors=True)


# ------------------------------------------------------------ module state

def _loaded():
    return os.path.exists("/sys/module/%s/initstate" % MODNAME)


def _rmmod():
    for _ in range(20):
        p = dmloop.run(["rmmod", MODNAME], check=False)
        if p.returncode == 0 or not _loaded():
            return
        time.sleep(0.3)
    raise AssertionError("rmmod %s: %s" % (MODNAME, p.stderr.strip()))


def _remove_devices(names):
    for name in names:
        if dmloop.exists(name):
            dmloop.remove(name, force=True)


@pytest.fixture
def unloaded(dmloop_module):
    """The session's module unloaded for the test; any dm_loop the test loaded
    is unloaded afterwards and the session's module loaded back."""
    _rmmod()
    devices = []
    yield devices            # the test appends the dm devices it creates
    _remove_devices(devices)
    if _loaded():
        _rmmod()
    args = os.environ.get("DMLOOP_KO_ARGS", "").split()
    dmloop.run(["insmod", dmloop_module.path] + args)


def _modprobe(check=True):
    return dmloop.run(["modprobe", "dm-loop"], check=check)


def _tmpfs_file(name, size=4096):
    """A small file on the guest's /tmp (tmpfs: the device is in file mode)."""
    path = Path("/tmp") / name
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    return path


# ------------------------------------------------------------ install helpers

def _install(*args, check=True, timeout=900):
    return dmloop.run([str(INSTALL)] + list(args), check=check, timeout=timeout)


def _snapshot(*roots):
    """{path: kind} of everything under the roots, kind being 'dir', 'file'
    or 'link -> target'."""
    out = {}
    for root in roots:
        root = str(root)
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath] = "dir"
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    out[p] = "link -> " + os.readlink(p)
                elif not os.path.isdir(p):
                    out[p] = "file"
    return out


def _watched():
    """What make install may touch: the kernel's updates/ and modules.* files,
    PREFIX's sbin, bin and share/man, the manifest's directory."""
    tops = {str(MODDIR / n): "file" for n in os.listdir(MODDIR) if n.startswith("modules.")}
    tops.update(_snapshot(MODDIR / "updates", PREFIX / "sbin", PREFIX / "bin",
                          PREFIX / "share" / "man", MANIFEST.parent))
    return tops


def _depmod_mentions_dm_loop():
    with open(MODDIR / "modules.dep") as f:
        return [l for l in f if "dm-loop" in l]


@pytest.fixture
def tmp_files():
    made = []
    yield made
    for p in made:
        if os.path.lexists(str(p)):
            os.unlink(str(p))


# ------------------------------------------------------------ make install

class TestMakeInstall:
    """One `make install` for the class (depmod is the slow part under TCG,
    minutes on the full tree); its last test is `make uninstall`."""

    @pytest.fixture(scope="class", autouse=True)
    def installed(self, dmloop_module, _throwaway_system, module_tree):
        """Yields the watched trees as they were before the install."""
        if not (REPO / "tools" / "dmloop-inspect").exists():
            pytest.skip("tools/dmloop-inspect is not built (make tools)")
        before = _watched()
        t0 = time.monotonic()
        _install("install", "KO=" + dmloop_module.path)
        print("make install (%s tree) took %.1f s" % (TREE, time.monotonic() - t0))
        yield before
        if MANIFEST.exists():
            _install("uninstall")

    def test_files_in_place(self, dmloop_module):
        """The module lands in updates/ (a copy of the .ko under test), the
        tool in PREFIX/sbin (executable), both man pages under PREFIX/share/man."""
        for what, path in INSTALLED.items():
            assert path.is_file(), "%s: %s missing" % (what, path)
        with open(dmloop_module.path, "rb") as a, open(INSTALLED["module"], "rb") as b:
            assert a.read() == b.read()
        assert os.access(str(INSTALLED["inspect"]), os.X_OK)
        assert stat.S_IMODE(os.stat(INSTALLED["dm-loop.4"]).st_mode) == 0o644
        out = dmloop.run(["dmloop-inspect", "--version"], check=False)
        assert out.returncode == 0, out.stderr
        assert shutil.which("dmloop-inspect") == str(INSTALLED["inspect"])

    def test_dmlosetup_links_to_dmsetup(self):
        """With no dmlosetup on PATH, install makes PREFIX/sbin/dmlosetup a
        link to dmsetup, and PATH finds it."""
        assert DMLOSETUP.is_symlink()
        assert os.readlink(DMLOSETUP) == shutil.which("dmsetup")
        assert shutil.which("dmlosetup") == str(DMLOSETUP)

    def test_manifest_lists_exactly_the_installed_files(self):
        """The manifest names each installed file (with its sha256) and the link,
        and nothing else that is a file."""
        lines = MANIFEST.read_text().splitlines()
        files = {l.split()[2] for l in lines if l.startswith("file ")}
        links = {l.split()[2] for l in lines if l.startswith("link ")}
        assert files == {str(p) for p in INSTALLED.values()}
        assert links == {str(DMLOSETUP)}
        assert "kernel %s" % KVER in lines

    def test_depmod_ran(self, module_tree):
        """modules.dep knows the installed module, with the dependencies the
        kernel's whole tree gives it (the modules it imports symbols from, as
        in the stock modules.dep); modinfo finds it by name, and the alias
        index resolves "dm-loop", the name dm core asks request_module for."""
        lines = _depmod_mentions_dm_loop()
        assert len(lines) == 1, "modules.dep: %s" % lines
        path, _, deps = lines[0].partition(":")
        assert path == "updates/dm-loop.ko"
        assert set(deps.split()) == module_tree, lines[0]
        p = dmloop.run(["modinfo", "-n", "dm-loop"])
        assert p.stdout.strip() == str(INSTALLED["module"])
        alias = dmloop.run(["modinfo", "-F", "alias", str(INSTALLED["module"])]).stdout.split()
        assert "dm-loop" in alias, "MODULE_ALIAS(\"dm-loop\") missing: %s" % alias
        assert dmloop.run(["modprobe", "-R", "dm-loop"]).stdout.split() == [MODNAME]

    def test_modprobe_loads_it(self, unloaded):
        """`modprobe dm-loop` loads the installed module, and a loop device works."""
        assert not _loaded()
        _modprobe()
        assert _loaded()
        f = _tmpfs_file("install-modprobe.img")
        unloaded.append("inst-modprobe")
        dmloop.dmsetup("create", "inst-modprobe", "--table", "0 8 loop %s 0" % f)
        assert dmloop.status("inst-modprobe").split()[2:4] == ["loop", "file"]

    def test_loop_table_autoloads_module(self, unloaded):
        """With the module not loaded, loading a `loop` table makes the kernel
        load it (dm core: request_module("dm-loop"), which runs the program
        in /proc/sys/kernel/modprobe: kmod's modprobe) and the table works."""
        helper = Path("/proc/sys/kernel/modprobe").read_text().strip()
        assert os.path.realpath(helper) == os.path.realpath(shutil.which("modprobe")), helper
        assert not _loaded()
        f = _tmpfs_file("install-autoload.img")
        unloaded.append("inst-autoload")
        dmloop.dmsetup("create", "inst-autoload", "--table", "0 8 loop %s 0" % f)
        assert _loaded(), "the table loaded but dm_loop is not"
        assert dmloop.status("inst-autoload").split()[2:4] == ["loop", "file"]
        data = os.urandom(4096)
        dmloop.write_bytes("/dev/mapper/inst-autoload", data, direct=True)
        assert dmloop.read_bytes("/dev/mapper/inst-autoload", 4096, direct=True) == data

    def test_dmlosetup_creates_and_removes_a_device(self, unloaded):
        """The installed dmlosetup (dmsetup's losetup personality) creates a
        loop device over a file, with the module autoloaded, and removes it."""
        f = _tmpfs_file("install-dmlosetup.img", 64 << 10)
        unloaded.append("loopinst0")          # dmlosetup wants a name starting "loop"
        dmloop.run(["dmlosetup", "loopinst0", str(f)])
        assert dmloop.table("loopinst0") == "0 128 loop %s 0" % f
        dmloop.run(["dmlosetup", "-d", "loopinst0"])
        assert not dmloop.exists("loopinst0")

    def test_man_finds_the_pages(self):
        """`man -w` finds dm-loop(4) and dmloop-inspect(8) where install put them."""
        if not shutil.which("man"):
            pytest.skip("man is not installed (Debian package man-db)")
        for section, name, key in (("4", "dm-loop", "dm-loop.4"), ("8", "dmloop-inspect", "inspect.8")):
            found = dmloop.run(["man", "-w", section, name]).stdout.strip()
            # /usr/local/man is a link to share/man on Debian: man may name either.
            assert os.path.realpath(found) == str(INSTALLED[key]), found

    def test_uninstall_removes_exactly_what_was_installed(self, installed, unloaded):
        """make uninstall (last in the class) leaves the watched trees as they
        were before the install (files, links and directories), modules.dep
        forgets dm-loop, and neither modprobe nor a `loop` table can load the
        module any more."""
        assert _watched() != installed
        _install("uninstall")
        after = _watched()
        assert after == installed, "differences: added %s, removed %s" % (
            sorted(set(after) - set(installed)), sorted(set(installed) - set(after)))
        assert not _depmod_mentions_dm_loop()
        assert not MANIFEST.exists()
        p = _modprobe(check=False)
        assert p.returncode != 0 and not _loaded(), "modprobe dm-loop still works"
        f = _tmpfs_file("uninstall.img")
        unloaded.append("inst-gone")
        p = dmloop.dmsetup("create", "inst-gone", "--table", "0 8 loop %s 0" % f, check=False)
        assert p.returncode != 0 and not _loaded(), "a loop table still loads after uninstall"


# ------------------------------------------------------------ make uninstall

class TestManifest:
    """What install records and uninstall removes, file by file.  Each test
    installs and uninstalls by itself, without depmod (DEPMOD=true): module
    loading is TestMakeInstall's business."""

    @pytest.fixture(autouse=True)
    def _tools_built(self):
        if not (REPO / "tools" / "dmloop-inspect").exists():
            pytest.skip("tools/dmloop-inspect is not built (make tools)")
        yield
        if MANIFEST.exists():
            _install("uninstall", "DEPMOD=true")

    def test_uninstall_keeps_a_file_changed_since(self, dmloop_module, tmp_files):
        """A file the user changed after install is not removed; the rest is."""
        _install("install", "KO=" + dmloop_module.path, "DEPMOD=true")
        page = INSTALLED["dm-loop.4"]
        tmp_files.append(page)
        with open(page, "a") as f:
            f.write('.\\" local note\n')
        out = _install("uninstall", "DEPMOD=true").stdout
        assert page.exists(), out
        assert "changed since it was installed" in out
        for what, path in INSTALLED.items():
            if path != page:
                assert not path.exists(), "%s: %s still there" % (what, path)
        assert not DMLOSETUP.is_symlink()

    def test_existing_dmlosetup_is_left_alone(self, dmloop_module, tmp_files):
        """With a dmlosetup already on PATH, install makes no link, records none,
        and uninstall leaves the user's dmlosetup where it was."""
        mine = PREFIX / "bin" / "dmlosetup"
        existed = mine.parent.exists()
        mine.parent.mkdir(parents=True, exist_ok=True)
        tmp_files.append(mine)
        mine.write_text("#!/bin/sh\nexit 0\n")
        mine.chmod(0o755)
        try:
            _install("install", "KO=" + dmloop_module.path, "DEPMOD=true")
            assert not os.path.lexists(str(DMLOSETUP))
            assert "link " not in MANIFEST.read_text()
            _install("uninstall", "DEPMOD=true")
            assert mine.read_text() == "#!/bin/sh\nexit 0\n"
        finally:
            if not existed:
                mine.unlink()
                mine.parent.rmdir()

    def test_destdir_stages_without_touching_the_system(self, dmloop_module, tmp_path):
        """DESTDIR=dir puts every file, the manifest included, under dir and
        nothing outside it; uninstall with the same DESTDIR empties dir again."""
        stage = tmp_path / "stage"
        before = _watched()
        _install("install", "DESTDIR=%s" % stage, "KO=" + dmloop_module.path)
        assert _watched() == before
        for path in INSTALLED.values():
            assert (stage / path.relative_to("/")).is_file(), path
        assert os.readlink(stage / DMLOSETUP.relative_to("/")) == shutil.which("dmsetup")
        assert (stage / MANIFEST.relative_to("/")).is_file()
        _install("uninstall", "DESTDIR=%s" % stage)
        assert list(stage.iterdir()) == []
        assert _watched() == before


# ------------------------------------------------------------ DKMS

class TestDkms:
    """`make dkms-install` once for the class (a build in the guest);
    `make dkms-remove` at its end, or in test_dkms_remove."""

    @pytest.fixture(scope="class")
    def dkms(self, _throwaway_system, module_tree):
        if not shutil.which("dkms"):
            pytest.skip("dkms is not installed (Debian package dkms: make deps)")
        if not (MODDIR / "build").is_dir():
            pytest.skip("no kernel headers for %s (%s/build)" % (KVER, MODDIR))
        if dmloop.run(["dkms", "status", "-m", "dm-loop"]).stdout.strip():
            pytest.skip("dm-loop is registered with dkms already")
        t0 = time.monotonic()
        # A kernel module build under TCG: minutes, more on a loaded host.
        p = _install("dkms-install", "KVER=" + KVER, check=False, timeout=1800)
        assert p.returncode == 0, "dkms-install failed:\n%s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])
        print("dkms-install took %.0f s" % (time.monotonic() - t0))
        yield p.stdout
        if dmloop.run(["dkms", "status", "-m", "dm-loop"]).stdout.strip():
            _install("dkms-remove")

    def test_dkms_builds_and_installs_for_running_kernel(self, dkms):
        """dkms add/build/install leaves dm-loop installed for this kernel: dkms
        status says so, the module is in updates/dkms with this kernel's
        vermagic and the package's version, and modinfo finds it by name."""
        ver = _package_version()
        status = dmloop.run(["dkms", "status", "-m", "dm-loop"]).stdout
        assert re.search(r"^dm-loop/%s, %s, \S+: installed" % (re.escape(ver), re.escape(KVER)),
                         status, re.M), status
        assert DKMS_KO.is_file(), "%s missing; dkms said:\n%s" % (DKMS_KO, dkms)
        assert dmloop.run(["modinfo", "-F", "vermagic", str(DKMS_KO)]).stdout.split()[0] == KVER
        assert dmloop.run(["modinfo", "-F", "version", str(DKMS_KO)]).stdout.strip() == ver
        assert dmloop.run(["modinfo", "-n", "dm-loop"]).stdout.strip() == str(DKMS_KO)
        assert Path("/usr/src/dm-loop-%s/dkms.conf" % ver).is_file()

    def test_dkms_module_loads_and_maps_data(self, dkms, unloaded):
        """The DKMS-built module loads with modprobe and carries data both ways."""
        _modprobe()
        assert _loaded()
        srcversion = Path("/sys/module/%s/srcversion" % MODNAME).read_text().strip()
        assert srcversion == dmloop.run(["modinfo", "-F", "srcversion", str(DKMS_KO)]).stdout.strip()
        f = _tmpfs_file("dkms.img", 1 << 20)
        unloaded.append("dkms0")
        dev = dmloop.create("dkms0", "0 2048 loop %s 0" % f)
        dmloop.write_random(dev, 1 << 20, seed=10, direct=True)
        dmloop.remove("dkms0")
        dmloop.verify_random(f, 1 << 20, seed=10)

    def test_dkms_remove(self, dkms, unloaded):
        """make dkms-remove unregisters dm-loop, removes its module and sources,
        and modprobe no longer finds it."""
        ver = _package_version()
        _install("dkms-remove")
        assert dmloop.run(["dkms", "status", "-m", "dm-loop"]).stdout.strip() == ""
        assert not DKMS_KO.exists()
        assert not Path("/usr/src/dm-loop-%s" % ver).exists()
        assert not Path("/var/lib/dkms/dm-loop").exists()
        p = _modprobe(check=False)
        assert p.returncode != 0 and not _loaded(), "modprobe dm-loop still works"


# ------------------------------------------------------------ Debian packages

DEB_DIR = REPO / "build" / "deb"
# What installing and purging the packages may touch (purge must leave it
# as it was): the module tree, the sources and DKMS's tree, the programs,
# the manual pages, the docs, dpkg's own records of packages, /etc.
DEB_WATCHED = [Path("/usr/src"), Path("/var/lib/dkms"), MODDIR, Path("/usr/sbin"),
               Path("/usr/share/man/man4"), Path("/usr/share/man/man8"),
               Path("/usr/share/doc"), Path("/var/lib/dpkg/info"), Path("/etc")]


DKMS_MOK = ["/var/lib/dkms/mok.key", "/var/lib/dkms/mok.pub"]


def _apt(*args, timeout=1800):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return dmloop.run(["apt-get", "-q", "-y"] + list(args), check=False, timeout=timeout, env=env)


def _dpkg_installed(pkg):
    p = dmloop.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg], check=False)
    return p.returncode == 0 and p.stdout.startswith("ii")


class TestDebPackages:
    """`make deb`'s packages, installed as Debian users install modules:
    `apt-get install ./dm-loop-dkms_*.deb ./dmloop-tools_*.deb` (whose
    postinst has DKMS build the module for the running kernel, in the
    guest), then `apt-get purge`."""

    @pytest.fixture(scope="class")
    def debs(self, _throwaway_system, module_tree):
        ver = _package_version()
        debs = [DEB_DIR / ("dm-loop-dkms_%s_all.deb" % ver),
                DEB_DIR / ("dmloop-tools_%s_amd64.deb" % ver)]
        missing = [str(d) for d in debs if not d.is_file()]
        if missing:
            pytest.skip("no packages to install (make deb): %s" % ", ".join(missing))
        if not (MODDIR / "build").is_dir():
            pytest.skip("no kernel headers for %s (%s/build)" % (KVER, MODDIR))
        if _dpkg_installed("dm-loop-dkms") or _dpkg_installed("dmloop-tools"):
            pytest.skip("the packages are installed already")
        before = _snapshot(*DEB_WATCHED)
        t0 = time.monotonic()
        p = _apt("install", "--no-install-recommends", *[str(d) for d in debs])
        assert p.returncode == 0, "apt-get install failed:\n%s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])
        print("apt-get install (a DKMS build) took %.0f s" % (time.monotonic() - t0))
        yield {"before": before, "install": p.stdout}
        if _dpkg_installed("dm-loop-dkms") or _dpkg_installed("dmloop-tools"):
            _apt("purge", "dm-loop-dkms", "dmloop-tools")

    def test_install_builds_the_module_for_the_running_kernel(self, debs):
        """The DKMS package's postinst built and installed dm-loop for this
        kernel: dkms status, the module with this kernel's vermagic in
        updates/dkms, found by name."""
        ver = _package_version()
        status = dmloop.run(["dkms", "status", "-m", "dm-loop"]).stdout
        assert re.search(r"^dm-loop/%s, %s, \S+: installed" % (re.escape(ver), re.escape(KVER)),
                         status, re.M), "%s\napt-get said:\n%s" % (status, debs["install"][-3000:])
        assert dmloop.run(["modinfo", "-F", "vermagic", str(DKMS_KO)]).stdout.split()[0] == KVER
        assert dmloop.run(["modinfo", "-n", "dm-loop"]).stdout.strip() == str(DKMS_KO)

    def test_packaged_module_and_tools_work(self, debs, unloaded, tmp_path):
        """modprobe loads the packaged module; the package's dmlosetup makes a
        device that carries data both ways; dmloop-inspect reads it; man finds
        both pages and dmlosetup's."""
        _modprobe()
        assert _loaded()
        assert shutil.which("dmlosetup") == "/usr/sbin/dmlosetup"
        f = _tmpfs_file("deb.img", 1 << 20)
        unloaded.append("loopdeb0")
        dmloop.run(["dmlosetup", "loopdeb0", str(f)])
        dev = Path("/dev/mapper/loopdeb0")
        dmloop.write_random(dev, 1 << 20, seed=12, direct=True)
        shown = dmloop.run(["/usr/sbin/dmloop-inspect", "show", "loopdeb0"]).stdout
        assert str(f) in shown, shown
        dmloop.run(["dmlosetup", "-d", "loopdeb0"])
        dmloop.verify_random(f, 1 << 20, seed=12)
        for page in ("dm-loop", "dmloop-inspect", "dmlosetup"):
            where = dmloop.run(["man", "-w", page]).stdout.strip()
            assert where.startswith("/usr/share/man/"), (page, where)

    def test_purge_leaves_nothing_behind(self, debs, unloaded):
        """apt-get purge removes the module (DKMS's prerm), its sources, the
        tools and pages; what it watched is as before the install, and
        modprobe no longer finds dm-loop."""
        p = _apt("purge", "dm-loop-dkms", "dmloop-tools")
        assert p.returncode == 0, "apt-get purge failed:\n%s\n%s" % (p.stdout[-3000:], p.stderr[-3000:])
        assert not _dpkg_installed("dm-loop-dkms") and not _dpkg_installed("dmloop-tools")
        after = _snapshot(*DEB_WATCHED)
        # DKMS's own signing key, made at its first build for every module
        # it will build (Secure Boot enrols it once): dkms's, not ours.
        for key in DKMS_MOK:
            if key not in debs["before"]:
                after.pop(key, None)
        added = sorted(set(after) - set(debs["before"]))
        gone = sorted(set(debs["before"]) - set(after))
        assert not added and not gone, "purge left %s and took %s" % (added, gone)
        assert _modprobe(check=False).returncode != 0 and not _loaded(), "modprobe dm-loop still works"
