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
	nfs-kernel-server fdisk udev lvm2 thin-provisioning-tools cryptsetup-bin mdadm kpartx \
	debhelper dh-dkms lintian dpkg-dev

KERNEL ?= stock
# debug/vm reads KERNEL from its environment as a kernel path or version
# (`KERNEL=/path debug/vm ...`); make's KERNEL is a name (7.2, debug) that the
# recipes turn into --kernel themselves.  Without this, `make check
# KERNEL=7.2` exported it to every debug/vm below, the host tests' guests
# included, which then looked for a kernel file named "7.2".
unexport KERNEL
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
# VM_RERUN: a guest that dies of the multi-threaded TCG int3 flake and of
# nothing else is run once more, single-threaded, and says so (debug/vm
# --help, debug/faults.py); `VM_RERUN=` leaves every int3 fatal at once.
VM_RERUN ?= --rerun-tcg-int3
# GUEST_KO_ARGS: module parameters.  The 6.12 guest runs the suite with one
# file-mode worker a device (the first release's behaviour, `workers 1`),
# the others with the default: the file-mode suite passes with both (the
# VFS path is the same on every kernel).
GUEST_KO_ARGS ?= $(if $(filter 6.12,$(KERNEL)),workers=1)
GUEST_RUN = $(VM) $(VM_KERNEL) $(VM_RERUN) $(GUEST_DISKS) --timeout $(GUEST_TIMEOUT) -- \
	env DMLOOP_KO=$(abspath $(KO)) DMLOOP_KO_ARGS='$(GUEST_KO_ARGS)' $(PYTEST) -q -rs $(GUEST_TESTS) \
	$(addprefix --deselect ,$(GUEST_DESELECT) $(if $(filter 6.12 7.2,$(KERNEL)),$(PREBUILT_DESELECT)))
GUEST_TESTS ?= $(if $(filter debug,$(KERNEL)),$(DEBUG_SUBSET),$(STOCK_SUITE))

.PHONY: deb swap-result swap-compare bench bench-quick bench-result
# Benchmarks (in the VM): tables and plots in build/bench/.
bench: deps all
	@debug/deps python3-matplotlib
	debug/bench

bench-quick: deps all
	@debug/deps python3-matplotlib
	debug/bench --quick

# make check's benchmark: bench-quick on the stock kernel (tables in
# build/bench-quick/), its cases in build/results/bench.{xml,rc} for
# debug/summary.  It fails only when the benchmark breaks (a stack or phase
# errors, rows or repetitions missing, a kernel fault, a timeout), never on
# a ratio.  make check runs it after the guest suites (about 4-5 minutes
# on two cores; CI's make check without it took 35 of its 45); `make check
# BENCH=0` leaves it out.
BENCH ?= 1
bench-result:
	@debug/deps python3-matplotlib || echo "check: bench-quick without plots (no python3-matplotlib)"
	@echo "check: bench-quick on the stock kernel"
	@debug/bench --quick --out $(BUILD)/bench-quick --junit $(BUILD)/results/bench.xml; \
		echo $$? > $(BUILD)/results/bench.rc

.PHONY: all module module-prebuilt tools deps check check-host check-guest check-install stress guest-result demo clean checkpatch

all: $(MODULE_TARGET) tools

module:
	$(MAKE) -C module

# A prebuilt kernel: unpack its image and headers once, build a copy of the
# module sources against those headers (module/ stays the stock build).
module-prebuilt:
	@debug/prebuilt-kernel $(SHARED_KERNELS)/$(KDIR_NAME) $(KROOT)
	@mkdir -p $(BUILD)/mod-$(KDIR_NAME)
	@cp module/Kbuild module/Makefile module/*.c module/*.h $(BUILD)/mod-$(KDIR_NAME)/
	$(MAKE) -C $(BUILD)/mod-$(KDIR_NAME) KDIR=$$(ls -d $(abspath $(KROOT))/usr/src/linux-headers-* | head -n1) \
		$(if $(filter debug,$(KERNEL)),DMLOOP_DEBUG=y)

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
# (and so CI) holds green on Debian's 6.1, 6.12 and 7.2 alike; the debug
# kernel (7-8x slower) runs DEBUG_SUBSET.  Long runs live in their own
# targets: stress, matrix, bench, check-install.
STOCK_SUITE ?= tests/guest/test_block_data.py tests/guest/test_introspection.py \
	tests/guest/test_file_mode.py tests/guest/test_file_workers.py tests/guest/test_block_safety.py \
	tests/guest/test_tables.py tests/guest/test_storage_path.py tests/guest/test_extent_walk.py \
	tests/guest/test_sparse_xfs.py \
	$(INSPECT_SUBSET) \
	tests/guest/test_install.py::TestMakeInstall \
	tests/guest/test_install.py::TestManifest \
	$(RELIABILITY_SUBSET) \
	tests/guest/test_matrix.py tests/guest/test_clients.py
G := tests/guest
INSPECT_SUBSET ?= \
	$(G)/test_inspect_guest.py::test_compare_agrees_on_healthy_devices[ext4-4k-frag-offset] \
	$(G)/test_inspect_guest.py::test_compare_agrees_on_healthy_devices[ext4-1k-frag] \
	$(G)/test_inspect_guest.py::test_compare_agrees_on_healthy_devices[xfs-frag-offset] \
	$(G)/test_inspect_guest.py::test_compare_reports_an_altered_filefrag[ext4-4k] \
	$(G)/test_inspect_guest.py::test_compare_reports_an_altered_filefrag[xfs] \
	$(G)/test_inspect_guest.py::test_report_archive_is_complete[ext4-4k]
RELIABILITY_SUBSET ?= \
	$(G)/test_faults.py::test_host_fault_reaches_caller[block-window] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[file_direct-write] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[file_buffered-error_target] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[block-flush] \
	$(G)/test_faults.py::test_remove_during_fault[file_buffered] \
	$(G)/test_faults.py::test_partly_failed_read_is_an_error[file_buffered] \
	$(G)/test_faults.py::test_partly_failed_read_is_an_error[file_direct] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[block-fsync] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[file_direct-o_dsync] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[file_buffered-fsync] \
	$(G)/test_lifecycle.py::test_create_remove_cycles[100] \
	$(G)/test_lifecycle.py::test_remove_refused_while_fio_runs[file] \
	$(G)/test_lifecycle.py::test_suspend_resume_reload_under_fio_verify[short-block] \
	$(G)/test_lifecycle.py::test_suspend_resume_reload_under_fio_verify[short-unmapped] \
	$(G)/test_lifecycle.py::test_rmmod_refused_while_devices_exist \
	$(G)/test_hostile_tables.py::test_generated_hostile_tables[default] \
	$(G)/test_hostile_tables.py::test_symlink_flipped_while_tables_load \
	$(G)/test_hostile_tables.py::test_file_unlinked_while_tables_load \
	$(G)/test_hostile_tables.py::test_filesystem_unmounted_while_tables_load
# Variants of cases the suite already covers (CI time); they run with
# `make check-guest GUEST_TESTS=tests/guest/test_tables.py GUEST_DESELECT=`.
GUEST_DESELECT ?= \
	$(G)/test_block_safety.py::test_reflinked_file_never_writes_the_other[original] \
	$(G)/test_block_safety.py::test_filesystem_cannot_be_unmounted_under_device[xfs-3] \
	$(G)/test_block_safety.py::test_active_swapfile_refused[force_file] \
	$(G)/test_tables.py::test_read_only_table_opens_file_read_only[file] \
	$(G)/test_tables.py::test_read_only_mount_needs_read_only_table[ro_bind_mount] \
	$(G)/test_tables.py::test_dmlosetup_read_only_fallback[immutable] \
	$(G)/test_tables.py::test_immutable_file_needs_read_only_table[append_only] \
	$(G)/test_tables.py::test_no_direct_io \
	$(G)/test_tables.py::test_status_and_table_filter_by_target \
	$(G)/test_tables.py::test_ima_measures_table_in_in_tree_form \
	$(G)/test_tables.py::test_require_block_on_ext4_gives_block_mode \
	$(G)/test_tables.py::test_force_file_gives_file_mode \
	$(G)/test_tables.py::test_table_prints_canonical_form_of_equivalent_input
# Left out on 6.12 and 7.2 only (CI time): more offsets of the same data
# checks, the largest extent tables, the matrix subset (its cells are the
# same layouts the data and extent-walk tests build there), and variants
# whose other cases run there (discard on ext4 and tmpfs, NFS reads, the
# block-mode reload under fio, one hostile-table race, the stacking check,
# which the debug kernel runs too); the offset
# arithmetic and the table building are the module's, the same on every
# kernel, and each filesystem keeps its offset-0 case there, the walk its
# batch cases.  `make matrix KERNEL=7.2` runs the whole matrix there.
# The clients (udev, LVM, LUKS, kpartx, md: user space over the same
# bios) on 6.1 only.  The workqueue-per-depth stacking test (about 50 s a
# kernel; the workqueue code is the same on every kernel) and the longest
# sparse-XFS cases (fio, the many-extent table, the all-holes file: the
# module's own logic; 7.2 keeps the cases that go through its
# exportfs_block_ops compat path) on 6.1 only.
PREBUILT_DESELECT ?= \
	$(G)/test_file_workers.py::test_stacked_file_mode_devices_never_wait_on_their_own_workqueue \
	$(G)/test_sparse_xfs.py::test_fio_verify_over_a_sparse_file \
	$(G)/test_sparse_xfs.py::test_a_table_of_many_extents_splits_and_merges_its_segments \
	$(G)/test_sparse_xfs.py::test_data_both_ways[sparse] \
	$(G)/test_matrix.py \
	$(G)/test_clients.py \
	$(G)/test_file_mode.py::test_discard_and_write_zeroes[nfs4] \
	$(G)/test_file_mode.py::test_discard_and_write_zeroes[9p] \
	$(G)/test_file_mode.py::test_file_to_device[nfs4] \
	$(G)/test_lifecycle.py::test_suspend_resume_reload_under_fio_verify[short-unmapped] \
	$(G)/test_hostile_tables.py::test_file_unlinked_while_tables_load \
	$(G)/test_hostile_tables.py::test_symlink_flipped_while_tables_load \
	$(G)/test_storage_path.py::test_device_cannot_map_itself \
	$(G)/test_block_data.py::test_device_to_file[off1blk-ext4-4k] \
	$(G)/test_block_data.py::test_device_to_file[off3blk-ext4-4k] \
	$(G)/test_block_data.py::test_device_to_file[off1blk-xfs] \
	$(G)/test_block_data.py::test_device_to_file[off3blk-xfs] \
	$(G)/test_block_data.py::test_file_to_device[off3blk-ext4-4k] \
	$(G)/test_block_data.py::test_file_to_device[off3blk-xfs] \
	$(G)/test_extent_walk.py::test_more_than_50000_extents \
	$(G)/test_extent_walk.py::test_unaligned_extents_on_1k_blocks
DEBUG_SUBSET ?= \
	$(G)/test_sparse_xfs.py \
	$(G)/test_file_workers.py::test_reload_and_remove_race_the_workers \
	$(G)/test_file_workers.py::test_workers_serve_a_deep_queue_in_parallel_and_no_more[four] \
	$(G)/test_block_data.py::test_fragmented_file_maps_every_extent \
	$(G)/test_faults.py::test_failslab_during_table_load[block] \
	$(G)/test_faults.py::test_fail_make_request_on_host_disk[file_direct] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[block-write] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[file_direct-window] \
	$(G)/test_faults.py::test_host_fault_reaches_caller[file_buffered-error_target] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[block-o_dsync] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[file_direct-o_dsync] \
	$(G)/test_faults.py::test_flush_orders_acknowledged_writes[file_buffered-fsync] \
	$(G)/test_lifecycle.py::test_suspend_resume_reload_under_fio_verify[short-block] \
	$(G)/test_lifecycle.py::test_rmmod_refused_while_devices_exist \
	$(G)/test_lifecycle.py::test_kmemleak_names_nothing_of_dm_loop \
	$(G)/test_hostile_tables.py::test_symlink_flipped_while_tables_load \
	$(G)/test_file_mode.py::test_discard_and_write_zeroes[ext4-sparse] \
	$(G)/test_faults.py::test_partly_failed_read_is_an_error[file_buffered] \
	$(G)/test_storage_path.py::test_remove_overtakes_bio_endio \
	$(G)/test_storage_path.py::test_device_cannot_map_itself \
	$(G)/test_storage_path.py::test_file_shared_by_file_mode_devices \
	$(G)/test_extent_walk.py::test_unwritten_extent_in_the_middle[xfs] \
	$(G)/test_extent_walk.py::test_multithreaded_loader_gets_the_bmap_walk_under_the_pin

check: deps checkpatch
	@mkdir -p $(BUILD)/results
	@rm -f $(BUILD)/results/*.xml $(BUILD)/results/*.rc $(BUILD)/results/*.log
	$(MAKE) module tools
	$(MAKE) --no-print-directory deb
	$(MAKE) -C tools asan
	$(PYTEST) -q -rs tests/host --junitxml=$(BUILD)/results/host.xml; \
		echo $$? > $(BUILD)/results/host.rc
	$(MAKE) --no-print-directory -j$(CHECK_JOBS) $(addprefix guest-result-,$(GUEST_KERNELS))
	@if [ "$(CHECK_JOBS)" != 1 ]; then for k in $(GUEST_KERNELS); do f=$(BUILD)/results/guest-$$k.log; \
		if [ -f $$f ]; then echo "==== the guest suite on the $$k kernel"; cat $$f; fi; done; fi
	$(MAKE) --no-print-directory swap-result
	@if [ "$(BENCH)" = 1 ]; then $(MAKE) --no-print-directory bench-result; fi
	@$(PY) debug/summary $$(ls $(BUILD)/results/*.rc | sed 's/\.rc$$//')

# One kernel's guest run, results in build/results/guest-<kernel>.{xml,rc,log}.
# make check runs CHECK_JOBS kernels at a time (default 1, output as it
# comes; with more, each guest's log is printed whole once all are done).
# On this 2-core machine two at once are no faster: the stock suite took
# 544 s alone and 1072 s next to 6.12's (each guest keeps both cores
# busy).  CHECK_JOBS=2 is for a machine with more cores.
CHECK_JOBS ?= 1
guest-result-%:
	@$(MAKE) --no-print-directory guest-result KERNEL=$*

guest-result:
	@if [ "$(KERNEL)" != stock ] && [ ! -d "$(SHARED_KERNELS)/$(KDIR_NAME)" ]; then \
		echo "check: skipping the $(KERNEL) kernel: no prebuilt kernel in $(SHARED_KERNELS)/$(KDIR_NAME)"; \
		exit 0; fi; \
	log=$(BUILD)/results/guest-$(KERNEL).log; \
	$(MAKE) --no-print-directory $(MODULE_TARGET) > $$log 2>&1 || { cat $$log; exit 1; }; \
	rcf=$(BUILD)/results/guest-$(KERNEL).rc; \
	echo "check: guest suite on the $(KERNEL) kernel (output: $$log)"; \
	if [ "$(CHECK_JOBS)" = 1 ]; then \
		{ $(GUEST_RUN) --junitxml=$(BUILD)/results/guest-$(KERNEL).xml $(T) 2>&1; \
		  echo $$? > $$rcf; } | tee -a $$log; \
	else \
		$(GUEST_RUN) --junitxml=$(BUILD)/results/guest-$(KERNEL).xml $(T) >> $$log 2>&1; \
		echo $$? > $$rcf; \
	fi; \
	echo "check: the $(KERNEL) kernel's guest suite exited $$(cat $$rcf): $$(grep -E '[0-9]+ (passed|failed)' $$log | tail -n 1)"; \
	if grep -q '^debug/vm: RERUN: exit' $$log; then \
		echo "check: the $(KERNEL) kernel's guest suite was run twice: the first run died of the TCG int3 flake (see $$log); the result is the single-threaded rerun's"; fi

# Encrypted swap on dm-loop under memory pressure: a guest of its own, with
# 512 MiB of RAM so that memory runs out (tests/guest/swap_pressure.py).
SWAP_VM = $(VM) --mem 512M --disk 2G --timeout 900
swap-result:
	@rcf=$(BUILD)/results/guest-swap.rc; log=$(BUILD)/results/guest-swap.log; \
	echo "check: encrypted swap under memory pressure, in a 512 MiB guest (output: $$log)"; \
	{ $(SWAP_VM) -- env DMLOOP_KO=$(abspath $(KO)) $(PYTEST) -q -rs \
		--junitxml=$(BUILD)/results/guest-swap.xml tests/guest/test_swap_pressure.py 2>&1; \
	  echo $$? > $$rcf; } | tee $$log

# The same load on dm-loop and on /dev/loop, one small guest each; prints
# what happened to each (a guest that hangs is killed after 600 s).
swap-compare: all
	@for b in dmloop loop; do \
		$(VM) --mem 512M --disk 2G --timeout 600 -- env DMLOOP_KO=$(abspath $(KO)) \
			$(PY) tests/guest/swap_pressure.py --backend $$b > $(BUILD)/swap-$$b.log 2>&1; \
		rc=$$?; r=$$(sed -n 's/^swap-pressure-result: //p' $(BUILD)/swap-$$b.log); \
		hung=$$(grep -c 'blocked for more than' $(BUILD)/swap-$$b.log); \
		case $$rc in 0) o="finished";; 1) o="failed";; 90) o="kernel fault";; 91) o="hung: killed after 600 s";; *) o="exit $$rc";; esac; \
		echo "swap-compare: $$b: $$o; hung-task reports: $$hung; $${r:-no result}"; \
	done

check-host: all checkpatch
	$(PYTEST) -q -rs tests/host

# The install tests whole, on the kernel's real module tree: make install
# and uninstall, modprobe and autoload, DKMS building the module in the guest,
# and four depmod runs over every module of the kernel (long under TCG).
# make check runs make install/uninstall, modprobe and autoload on a small
# copy of the module tree (test_install.py says why that is the same for
# dm-loop), and the manifest cases; not DKMS nor the Debian packages
# (TestDebPackages: a module build under TCG, 211 s of CI's 45 minutes).
# INSTALL_TREE=small: the whole file on the small tree.
INSTALL_TREE ?= full
check-install: all
	$(VM) $(VM_KERNEL) $(GUEST_DISKS) --timeout 5400 -- env DMLOOP_KO=$(abspath $(KO)) \
		DMLOOP_INSTALL_TREE=$(INSTALL_TREE) $(PYTEST) -q -rs tests/guest/test_install.py $(T)

check-guest: all
	$(GUEST_RUN) $(T)

# The long reliability tests (marked stress: 1000 create/remove cycles,
# minutes of suspend/reload under fio verify, 64 devices, 5000 hostile
# tables): not in make check.  KERNEL= and T= work as for check-guest.
STRESS_TESTS ?= tests/guest/test_lifecycle.py tests/guest/test_hostile_tables.py
stress: all
	$(VM) $(VM_KERNEL) $(GUEST_DISKS) --timeout 5400 -- env DMLOOP_KO=$(abspath $(KO)) \
		DMLOOP_STRESS=1 $(PYTEST) -q -rs -m stress $(STRESS_TESTS) $(T)

# The whole filesystem x layout x offset matrix (debug/matrix: two guests,
# each with an 8 GiB sparse disk, sharing the cell list; under an hour under
# TCG on 2 cores): the table in build/matrix/matrix.md and .csv.  T= passes
# pytest arguments (MATRIX_NAME=nfs make matrix T="-k nfs/" runs a piece).
# make check runs its fast subset (tests/guest/test_matrix.py).
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

# Debian packages: dm-loop-dkms (the module's sources for DKMS) and
# dmloop-tools, built from a copy of the tree (debian/ is the recipe) into
# build/deb/, and checked with lintian (an error fails the build).
DEB_DIR := $(BUILD)/deb
deb:
	@debug/deps debhelper dh-dkms dpkg-dev lintian libdevmapper-dev pkgconf
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src/module $(DEB_DIR)/src/tools
	cp -r debian dkms.conf $(DEB_DIR)/src/
	cp module/Kbuild module/Makefile $(filter-out %.mod.c,$(wildcard module/*.c)) module/*.h module/dm-loop.4 $(DEB_DIR)/src/module/
	cp tools/Makefile tools/*.c tools/*.h tools/dmloop-inspect.8 $(DEB_DIR)/src/tools/
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc > ../build.log 2>&1 || { tail -n 40 ../build.log; exit 1; }
	lintian --fail-on error --info $(DEB_DIR)/*.changes
	@ls $(DEB_DIR)/*.deb

demo: deps all
	$(VM) --disk 1G --timeout 600 -- bash debug/demo

clean:
	$(MAKE) -C module clean
	-$(MAKE) -C tools clean
	rm -rf $(BUILD)
