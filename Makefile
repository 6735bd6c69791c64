# dm-loop: the one entry point.
#
#   make deps     install what building and testing need (Debian, as root)
#   make          build module/dm-loop.ko and tools/dmloop-inspect
#   make check    deps + build + static checks + host tests + guest tests in the VM
#   make demo     deps + build + a short tour in the VM
#
# KDIR=...      build the module against this kernel tree (default: see module/Makefile)

PY      := /usr/bin/python3
PYTEST  := $(PY) -m pytest -p no:cacheprovider
VM      := debug/vm
BUILD   := build

# Scratch disks the guest suite uses (sparse files; /dev/vda, /dev/vdb, ...).
GUEST_DISKS ?= --disk 2G --disk 2G --disk 256M --disk 256M
GUEST_TIMEOUT ?= 2400
# Extra pytest arguments for the guest suite (e.g. -k reflink, -x).
T ?=

DEB_PACKAGES := qemu-system-x86 linux-image-amd64 linux-headers-amd64 \
	busybox-static kmod cpio e2fsprogs xfsprogs btrfs-progs dmsetup \
	libdevmapper-dev fio python3 python3-pytest sparse linux-source-6.1 \
	gcc make libc6-dev pkg-config util-linux coreutils attr \
	libelf-dev bc flex bison tar gzip xz-utils file groff-base man-db

export KDIR

.PHONY: all module tools deps check check-host check-guest demo clean checkpatch sparse

all: module tools

module:
	$(MAKE) -C module

tools:
	$(MAKE) -C tools

deps:
	@debug/deps $(DEB_PACKAGES)

# checkpatch.pl from Debian's linux-source-6.1, unpacked once.
CHECKPATCH := $(BUILD)/checkpatch/scripts/checkpatch.pl
$(CHECKPATCH):
	@mkdir -p $(BUILD)/checkpatch
	@src=$$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -n1); \
	if [ -z "$$src" ]; then echo "checkpatch: install linux-source-6.1 (make deps)" >&2; exit 1; fi; \
	tar -xf "$$src" -C $(BUILD)/checkpatch --strip-components=1 --wildcards \
		'*/scripts/checkpatch.pl' '*/scripts/spelling.txt' '*/scripts/const_structs.checkpatch'

checkpatch: $(CHECKPATCH)

check: deps all checkpatch
	@mkdir -p $(BUILD)/results
	@rm -f $(BUILD)/results/*.xml
	$(MAKE) -C tools asan
	$(PYTEST) -q -rs tests/host --junitxml=$(BUILD)/results/host.xml; \
		echo $$? > $(BUILD)/results/host.rc
	$(VM) $(GUEST_DISKS) --timeout $(GUEST_TIMEOUT) -- \
		$(PYTEST) -q -rs tests/guest --junitxml=$(BUILD)/results/guest.xml $(T); \
		echo $$? > $(BUILD)/results/guest.rc
	@$(PY) debug/summary $(BUILD)/results/host $(BUILD)/results/guest

check-host: all checkpatch
	$(PYTEST) -q -rs tests/host

check-guest: all
	$(VM) $(GUEST_DISKS) --timeout $(GUEST_TIMEOUT) -- $(PYTEST) -q -rs tests/guest $(T)

demo: deps all
	$(VM) --disk 1G --timeout 600 -- bash debug/demo

clean:
	$(MAKE) -C module clean
	-$(MAKE) -C tools clean
	rm -rf $(BUILD)
