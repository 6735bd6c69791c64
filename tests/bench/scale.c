// SPDX-License-Identifier: GPL-2.0
/*
 * scale: create and remove N block devices of one kind from one process,
 * and report the rates and the memory each device costs.
 *
 *   scale loop    N DIR [J]      dm-loop devices over N files made in DIR:
 *                                even ones written (block mode), odd ones
 *                                sparse (file mode)
 *   scale linear  N BLOCKDEV [J] dm-linear devices over 4 KiB pieces of BLOCKDEV
 *   scale losetup N DIR [J]      /dev/loop devices (LOOP_CONFIGURE) over N files
 *
 * J worker processes (default 1) share the devices out, device i to worker
 * i % J: under QEMU TCG most of a create or remove is spent waiting for RCU
 * grace periods, which workers overlap.  Prints one JSON object.  Memory is
 * MemAvailable and Slab from /proc/meminfo, read after the files exist and
 * again with all devices up.  With all devices up, a sample of SAMPLE of
 * them, spread over the whole range, each takes a 4 KiB direct write and
 * reads it back (a device that does not keep its data fails the run); for
 * dm-loop, the module's block_devices and file_devices are reported too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libdevmapper.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE 4096
#define SAMPLE 200

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long meminfo_kb(const char *key)
{
	char line[256];
	long long v = -1;
	size_t n = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtoll(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static void settle(void)
{
	int fd;

	sync();
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, "3\n", 2) < 0)
			perror("drop_caches");
		close(fd);
	}
	usleep(200000);
}

static int dm_run(int type, const char *name, const char *target,
		  const char *params)
{
	struct dm_task *dmt = dm_task_create(type);
	int ok;

	if (!dmt)
		return -1;
	ok = dm_task_set_name(dmt, name);
	if (ok && target)
		ok = dm_task_add_target(dmt, 0, FILE_SIZE / 512, target, params);
	ok = ok && dm_task_run(dmt);
	dm_task_destroy(dmt);
	return ok ? 0 : -1;
}

static int make_files(const char *dir, long n, int sparse)
{
	static char buf[FILE_SIZE];
	char path[4096];
	long i;

	memset(buf, 0xa5, sizeof(buf));
	for (i = 0; i < n; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/f%ld", dir, i);
		fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
		/* A hole is file mode's (reason unmapped); dm-loop only. */
		if (fd < 0 || (sparse && i % 2 ?
			       ftruncate(fd, sizeof(buf)) :
			       pwrite(fd, buf, sizeof(buf), 0) != sizeof(buf))) {
			perror(path);
			return -1;
		}
		close(fd);
	}
	sync();
	return 0;
}

/* The device node of device i of this kind (devtmpfs makes dm-N). */
static int dev_path(const char *kind, long i, char *path, size_t len)
{
	struct dm_task *dmt;
	struct dm_info info;
	char name[64];
	int ok;

	if (!strcmp(kind, "losetup")) {
		snprintf(path, len, "/dev/loop%ld", i);
		return 0;
	}
	snprintf(name, sizeof(name), "scale%ld", i);
	dmt = dm_task_create(DM_DEVICE_INFO);
	if (!dmt)
		return -1;
	ok = dm_task_set_name(dmt, name) && dm_task_run(dmt) &&
	     dm_task_get_info(dmt, &info) && info.exists;
	dm_task_destroy(dmt);
	if (!ok)
		return -1;
	snprintf(path, len, "/dev/dm-%u", info.minor);
	return 0;
}

/*
 * Write a pattern naming the device to each of SAMPLE devices spread over
 * 0..n-1 with O_DIRECT, then read every one back: 0 when all kept it.
 */
static int sample_io(const char *kind, long n, int *count)
{
	static char wbuf[FILE_SIZE] __attribute__((aligned(4096)));
	static char rbuf[FILE_SIZE] __attribute__((aligned(4096)));
	long step = n > SAMPLE ? n / SAMPLE : 1, i;
	char path[64];
	int pass;

	*count = 0;
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < n; i += step) {
			int fd, ok;

			if (dev_path(kind, i, path, sizeof(path)) < 0) {
				fprintf(stderr, "scale: no %s device %ld\n", kind, i);
				return -1;
			}
			memset(wbuf, 0, sizeof(wbuf));
			snprintf(wbuf, sizeof(wbuf), "scale %s device %ld", kind, i);
			fd = open(path, O_RDWR | O_DIRECT);
			if (fd < 0) {
				perror(path);
				return -1;
			}
			if (!pass)
				ok = pwrite(fd, wbuf, sizeof(wbuf), 0) == sizeof(wbuf) &&
				     !fsync(fd);
			else
				ok = pread(fd, rbuf, sizeof(rbuf), 0) == sizeof(rbuf) &&
				     !memcmp(wbuf, rbuf, sizeof(rbuf));
			close(fd);
			if (!ok) {
				fprintf(stderr, "scale: %s on %s (device %ld) failed%s\n",
					pass ? "read-back" : "write", path, i,
					pass ? " or returned other data" : "");
				return -1;
			}
			*count += !pass;
		}
	}
	return 0;
}

static long param(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/dm_loop/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static int losetup_one(const char *file, int nr)
{
	struct loop_config cfg = { 0 };
	char dev[64];
	int ctl, fd, lfd, r;

	/* Worker i's devices are numbered by i: no race for a free one. */
	ctl = open("/dev/loop-control", O_RDWR);
	if (ctl < 0)
		return -1;
	r = ioctl(ctl, LOOP_CTL_ADD, nr);
	close(ctl);
	if (r < 0 && errno != EEXIST)
		return -1;
	snprintf(dev, sizeof(dev), "/dev/loop%d", nr);
	lfd = open(dev, O_RDWR);
	fd = open(file, O_RDWR);
	if (lfd < 0 || fd < 0)
		return -1;
	cfg.fd = fd;
	r = ioctl(lfd, LOOP_CONFIGURE, &cfg);
	close(fd);
	close(lfd);
	return r;
}

static int unlosetup_one(int nr)
{
	char dev[64];
	int fd, ctl, r;

	snprintf(dev, sizeof(dev), "/dev/loop%d", nr);
	fd = open(dev, O_RDWR);
	if (fd < 0)
		return -1;
	r = ioctl(fd, LOOP_CLR_FD, 0);
	close(fd);
	ctl = open("/dev/loop-control", O_RDWR);
	if (ctl >= 0) {
		ioctl(ctl, LOOP_CTL_REMOVE, nr);
		close(ctl);
	}
	return r;
}

/* Create (or remove) devices i = first, first + step, ... < n. */
static int run_part(const char *kind, const char *where, long n, long first,
		    long step, int create)
{
	char name[64], params[4200];
	int failed = 0;
	long i;

	dm_log_init_verbose(0);
	dm_udev_set_sync_support(0);
	for (i = first; i < n; i += step) {
		int r;

		snprintf(name, sizeof(name), "scale%ld", i);
		if (!strcmp(kind, "losetup")) {
			snprintf(params, sizeof(params), "%s/f%ld", where, i);
			r = create ? losetup_one(params, (int)i) :
				     unlosetup_one((int)i);
		} else if (!create) {
			r = dm_run(DM_DEVICE_REMOVE, name, NULL, NULL);
		} else if (!strcmp(kind, "loop")) {
			snprintf(params, sizeof(params), "%s/f%ld 0", where, i);
			r = dm_run(DM_DEVICE_CREATE, name, "loop", params);
		} else {
			snprintf(params, sizeof(params), "%s %ld", where,
				 i * (FILE_SIZE / 512));
			r = dm_run(DM_DEVICE_CREATE, name, "linear", params);
		}
		if (r) {
			fprintf(stderr, "scale: %s %s device %ld failed: %s\n",
				create ? "creating" : "removing", kind, i,
				strerror(errno));
			failed = 1;
			if (create)	/* the rest is left to removal */
				break;
		}
	}
	dm_lib_release();
	return failed;
}

/* Run run_part() in j worker processes; 0 when every one succeeded. */
static int run_workers(const char *kind, const char *where, long n, int j,
		       int create)
{
	int w, status, failed = 0;

	for (w = 0; w < j; w++) {
		pid_t pid = fork();

		if (pid < 0) {
			perror("fork");
			return -1;
		}
		if (!pid)
			_exit(run_part(kind, where, n, w, j, create));
	}
	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			failed = 1;
	return failed;
}

int main(int argc, char **argv)
{
	long n;
	int j = 1, failed;
	const char *kind, *where;
	long long avail0, slab0, avail1, slab1;
	double t0, t_create, t_remove, t_io = 0;
	long nblock = -1, nfile = -1;
	char nblock_s[24] = "null", nfile_s[24] = "null";
	int nio = 0;

	if (argc < 4 || argc > 5 || (n = strtol(argv[2], NULL, 10)) <= 0 ||
	    (argc == 5 && (j = atoi(argv[4])) <= 0)) {
		fprintf(stderr, "usage: scale loop|linear|losetup N DIR|BLOCKDEV [WORKERS]\n");
		return 2;
	}
	kind = argv[1];
	where = argv[3];
	if (strcmp(kind, "loop") && strcmp(kind, "linear") &&
	    strcmp(kind, "losetup")) {
		fprintf(stderr, "scale: unknown kind %s\n", kind);
		return 2;
	}
	if (strcmp(kind, "linear") && make_files(where, n, !strcmp(kind, "loop")))
		return 1;

	settle();
	avail0 = meminfo_kb("MemAvailable");
	slab0 = meminfo_kb("Slab");
	t0 = now();
	failed = run_workers(kind, where, n, j, 1);
	t_create = now() - t0;
	settle();
	avail1 = meminfo_kb("MemAvailable");
	slab1 = meminfo_kb("Slab");
	if (!failed) {
		if (!strcmp(kind, "loop")) {
			nblock = param("block_devices");
			nfile = param("file_devices");
		}
		t0 = now();
		if (sample_io(kind, n, &nio))
			failed = 3;
		t_io = now() - t0;
	}

	/* Remove everything, also after a failed create (a missing device
	 * then fails its removal, which is fine). */
	t0 = now();
	if (run_workers(kind, where, n, j, 0) && !failed)
		failed = 2;
	dm_lib_release();
	t_remove = now() - t0;
	/* null: not a dm-loop run, or the module's figure was unreadable */
	if (nblock >= 0)
		snprintf(nblock_s, sizeof(nblock_s), "%ld", nblock);
	if (nfile >= 0)
		snprintf(nfile_s, sizeof(nfile_s), "%ld", nfile);
	if (failed) {
		fprintf(stderr, "scale: %s failed\n",
			failed == 1 ? "creating devices" :
			failed == 2 ? "removing devices" : "I/O through the sample");
		return 1;
	}

	printf("{\"kind\": \"%s\", \"count\": %ld, \"workers\": %d, "
	       "\"create_s\": %.3f, \"remove_s\": %.3f, "
	       "\"create_per_s\": %.1f, \"remove_per_s\": %.1f, "
	       "\"mem_kb_per_dev\": %.2f, \"slab_kb_per_dev\": %.2f, "
	       "\"io_devices\": %d, \"io_s\": %.3f, "
	       "\"block_devices\": %s, \"file_devices\": %s}\n",
	       kind, n, j, t_create, t_remove, n / t_create, n / t_remove,
	       (double)(avail0 - avail1) / n, (double)(slab1 - slab0) / n,
	       nio, t_io, nblock_s, nfile_s);
	return 0;
}
