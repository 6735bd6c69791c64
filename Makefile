# dm-loop: the one entry point.
#
#   make deps     install what building and testing need (Debian, as root)
#   make          build module/dm-loop.ko and tools/dmloop-inspect
#   make check    deps + build + static checks + host tests + guest tests in the VM
#   make demo     deps + build + a short tour in the VM
#
# KDIR=...      build the module against this kernel tree (default: see module/Makefile)
# KERNEL=NAME   test on a prebuilt kernel from ../shared/kernels/ instead of
#               Debian's stock 6.1: debug (6.1 + KASAN/lockdep/kmemleak),
#               6.12, 7.2.  The module is built for it under build/mod-NAME/.

# `make` alone builds (bench and others are defined before `all`).
.DEFAULT_GOAL := all

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
	gcc make libc6-dev pkg-config util-linux coreutils attr dkms \
	libelf-dev bc flex bison tar gzip xz-utils file groff-base man-db \
	nfs-kernel-server

KERNEL ?= stock
SHARED_KERNELS ?= $(abspath ../shared/kernels)

ifeq ($(KERNEL),stock)
KO        := module/dm-loop.ko
VM_KERNEL :=
MODULE_TARGET := module
else
KDIR_NAME := $(if $(filter debug,$(KERNEL)),debug-6.1,$(KERNEL))
KROOT     := $(BUILD)/kernels/$(KDIR_NAME)
KO        := $(BUILD)/mod-$(KDIR_NAME)/dm-loop.ko
VM_KERNEL := --kernel $(KROOT)
MODULE_TARGET := module-prebuilt
endif

# The guest suite: which tests, on which kernel, with which module.
GUEST_RUN = $(VM) $(VM_KERNEL) $(GUEST_DISKS) --timeout $(GUEST_TIMEOUT) -- \
	env DMLOOP_KO=$(abspath $(KO)) $(PYTEST) -q -rs $(GUEST_TESTS)
GUEST_TESTS ?= $(if $(filter stock,$(KERNEL)),$(STOCK_SUITE),$(if $(filter debug,$(KERNEL)),$(DEBUG_SUBSET),$(PORTABLE_SUBSET)))

.PHONY: bench bench-quick
# Benchmarks (in the VM): tables and plots in build/bench/.
bench: deps all
	@debug/deps python3-matplotlib
	debug/bench

bench-quick: deps all
	@debug/deps python3-matplotlib
	debug/bench --quick

.PHONY: all module module-prebuilt tools deps check check-host check-guest stress guest-result demo clean checkpatch

all: $(MODULE_TARGET) tools

module:
	$(MAKE) -C module

# A prebuilt kernel: unpack its image and headers once, build a copy of the
# module sources against those headers (module/ stays the stock build).
module-prebuilt:
	@debug/prebuilt-kernel $(SHARED_KERNELS)/$(KDIR_NAME) $(KROOT)
	@mkdir -p $(BUILD)/mod-$(KDIR_NAME)
	@cp module/Kbuild module/Makefile module/*.c module/*.h $(BUILD)/mod-$(KDIR_NAME)/
	$(MAKE) -C $(BUILD)/mod-$(KDIR_NAME) KDIR=$$(ls -d $(abspath $(KROOT))/usr/src/linux-headers-* | head -n1)

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

# Kernels the guest suite runs on: Debian's stock 6.1, then each prebuilt
# kernel found in ../shared/kernels/ (a missing one is skipped, with the
# reason printed).  `make check KERNEL=6.12` runs on that one kernel only.
GUEST_KERNELS ?= $(if $(filter stock,$(KERNEL)),stock 6.12 7.2 debug,$(KERNEL))
# What each kernel runs.  STOCK_SUITE is the guest suite that make check
# (and so CI) holds green; `make check-guest GUEST_TESTS=tests/guest` runs
# every guest test there is.  The prebuilt kernels run a subset for now (CI
# time); the debug kernel is 7-8x slower still.
STOCK_SUITE ?= tests/guest/test_block_data.py tests/guest/test_introspection.py
PORTABLE_SUBSET ?= tests/guest/test_block_data.py
DEBUG_SUBSET ?= tests/guest/test_block_data.py::test_fragmented_file_maps_every_extent \
	tests/guest/test_block_data.py::test_device_to_file[off1blk-xfs] \
	tests/guest/test_block_data.py::test_file_to_device[off3blk-ext4-1k]

check: deps checkpatch
	@mkdir -p $(BUILD)/results
	@rm -f $(BUILD)/results/*.xml $(BUILD)/results/*.rc
	$(MAKE) module tools
	$(MAKE) -C tools asan
	$(PYTEST) -q -rs tests/host --junitxml=$(BUILD)/results/host.xml; \
		echo $$? > $(BUILD)/results/host.rc
	@for k in $(GUEST_KERNELS); do \
		$(MAKE) --no-print-directory guest-result KERNEL=$$k || exit 1; \
	done
	@$(PY) debug/summary $$(ls $(BUILD)/results/*.rc | sed 's/\.rc$$//')

# One kernel's guest run, results in build/results/guest-<kernel>.{xml,rc}.
guest-result:
	@if [ "$(KERNEL)" != stock ] && [ ! -d "$(SHARED_KERNELS)/$(KDIR_NAME)" ]; then \
		echo "check: skipping the $(KERNEL) kernel: no prebuilt kernel in $(SHARED_KERNELS)/$(KDIR_NAME)"; \
		exit 0; fi; \
	$(MAKE) --no-print-directory $(MODULE_TARGET) || exit 1; \
	echo "check: guest suite on the $(KERNEL) kernel"; \
	$(GUEST_RUN) --junitxml=$(BUILD)/results/guest-$(KERNEL).xml $(T); \
		echo $$? > $(BUILD)/results/guest-$(KERNEL).rc

check-host: all checkpatch
	$(PYTEST) -q -rs tests/host

check-guest: all
	$(GUEST_RUN) $(T)

# The long reliability tests (marked stress: 1000 create/remove cycles,
# minutes of suspend/reload under fio verify, 64 devices, 5000 hostile
# tables): not in make check.  KERNEL= and T= work as for check-guest.
STRESS_TESTS ?= tests/guest/test_lifecycle.py tests/guest/test_hostile_tables.py
stress: all
	$(VM) $(VM_KERNEL) $(GUEST_DISKS) --timeout 5400 -- env DMLOOP_KO=$(abspath $(KO)) \
		DMLOOP_STRESS=1 $(PYTEST) -q -rs -m stress $(STRESS_TESTS) $(T)

# The whole filesystem x layout x offset matrix (debug/matrix, one VM with
# an 8 GiB sparse disk; hours under TCG): the table in build/matrix/matrix.md
# and .csv.  make check runs its fast subset (tests/guest/test_matrix.py).
.PHONY: matrix
matrix: deps all
	DMLOOP_KO=$(abspath $(KO)) debug/matrix $(VM_KERNEL) $(T)

# Install like a kernel module (as root; debug/install): the module into
# /lib/modules/<its version>/updates/ plus depmod, dmloop-inspect, both man
# pages, and a dmlosetup link when there is none.  DESTDIR=, PREFIX=
# (default /usr/local), DEPMOD= (default depmod).  What install puts where
# is recorded in /var/lib/dm-loop/install-manifest; uninstall removes
# exactly that.
.PHONY: install uninstall dkms-install dkms-remove
PREFIX ?= /usr/local

install: all
	debug/install install DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" KO="$(abspath $(KO))" $(if $(DEPMOD),DEPMOD="$(DEPMOD)")

uninstall:
	debug/install uninstall DESTDIR="$(DESTDIR)" $(if $(DEPMOD),DEPMOD="$(DEPMOD)")

# DKMS: sources to /usr/src/dm-loop-<version>, then dkms add, build and
# install for KVER= (default: the kernel `make` builds for).
dkms-install:
	@debug/deps dkms
	debug/install dkms-install $(if $(KVER),KVER="$(KVER)")

dkms-remove:
	debug/install dkms-remove

demo: deps all
	$(VM) --disk 1G --timeout 600 -- bash debug/demo

clean:
	$(MAKE) -C module clean
	-$(MAKE) -C tools clean
	rm -rf $(BUILD)
