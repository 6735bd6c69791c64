// SPDX-License-Identifier: GPL-2.0
/*
 * dm.c -- find dm devices and read their tables with libdevmapper rather
 * than parsing dmsetup's text. Read-only: no udev cookies are involved, so
 * DM_DISABLE_UDEV makes no difference; udev sync is switched off anyway.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libdevmapper.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "dm.h"
#include "util.h"

static char last_error[512];

/* libdevmapper's messages are kept for ours, not printed as they come. */
static void dm_log(int level, const char *file, int line, int dm_errno,
		   const char *fmt, ...)
{
	va_list ap;

	(void)file;
	(void)line;
	(void)dm_errno;
	if ((level & 7) > 3)	/* below _LOG_ERR */
		return;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
}

static void dm_setup(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	dm_log_with_errno_init(dm_log);
	dm_udev_set_sync_support(0);
}

/* Does the kernel have device-mapper? -1 if /proc/misc cannot tell. */
int dm_kernel_available(void)
{
	char *misc = NULL;
	int rc;

	if (read_text_file("/proc/misc", &misc, NULL))
		return -1;
	rc = strstr(misc, "device-mapper") != NULL;
	free(misc);
	return rc;
}

/*
 * libdevmapper creates /dev/mapper/control when it is missing, even when
 * the kernel has no driver behind it: a read-only tool must not, so ask
 * first.
 */
static int dm_available(const char *what, bool quiet)
{
	if (access("/dev/mapper/control", F_OK) == 0 || dm_kernel_available() != 0)
		return 0;
	if (!quiet)
		error("%s: the kernel has no device-mapper driver "
		      "(no device-mapper in /proc/misc: modprobe dm_mod)", what);
	return -1;
}

static void report_dm_failure(const char *what)
{
	if (dm_kernel_available() == 0) {
		error("%s: the kernel has no device-mapper driver "
		      "(modprobe dm_mod)%s%s", what,
		      last_error[0] ? ": " : "", last_error);
	} else {
		error("%s: cannot talk to device-mapper through /dev/mapper/control%s%s",
		      what, last_error[0] ? ": " : "", last_error);
	}
}

static struct dm_task *dm_run(int type, unsigned int major, unsigned int minor)
{
	struct dm_task *dmt = dm_task_create(type);

	if (!dmt)
		return NULL;
	if (!dm_task_set_major(dmt, (int)major) ||
	    !dm_task_set_minor(dmt, (int)minor) ||
	    !dm_task_no_open_count(dmt) || !dm_task_run(dmt)) {
		dm_task_destroy(dmt);
		return NULL;
	}
	return dmt;
}

static void read_tables(struct dm_device *d)
{
	struct dm_task *table = dm_run(DM_DEVICE_TABLE, d->major, d->minor);
	struct dm_task *status = dm_run(DM_DEVICE_STATUS, d->major, d->minor);
	struct dm_info info;
	void *next = NULL;
	size_t cap = 0;

	if (!table)
		goto out;
	if (!dm_task_get_info(table, &info) || !info.exists)
		goto out;	/* removed since the list was taken */
	d->read_only = info.read_only;
	do {
		uint64_t start, length;
		char *type = NULL, *params = NULL;

		next = dm_get_next_target(table, next, &start, &length, &type,
					  &params);
		if (!type)
			continue;
		if (d->nt == cap) {
			cap = cap ? cap * 2 : 4;
			d->t = xrealloc_array(d->t, cap, sizeof(*d->t));
		}
		d->t[d->nt++] = (struct dm_target_line){
			.start = start,
			.length = length,
			.type = xstrdup(type),
			.params = xstrdup(params ? params : ""),
		};
	} while (next);

	/* Status lines come in table order, one per target. */
	if (status) {
		size_t i = 0;

		next = NULL;
		do {
			uint64_t start, length;
			char *type = NULL, *params = NULL;

			next = dm_get_next_target(status, next, &start, &length,
						  &type, &params);
			if (!type)
				continue;
			for (; i < d->nt; i++)
				if (d->t[i].start == start)
					break;
			if (i < d->nt)
				d->t[i].status = xstrdup(params ? params : "");
		} while (next);
	}
out:
	if (table)
		dm_task_destroy(table);
	if (status)
		dm_task_destroy(status);
}

static int device_cmp(const void *a, const void *b)
{
	const struct dm_device *x = a, *y = b;

	return x->minor < y->minor ? -1 : x->minor > y->minor;
}

int dm_list_devices(struct dm_device_list *out)
{
	struct dm_task *dmt;
	struct dm_names *names;
	size_t cap = 0;
	unsigned int next = 0;

	memset(out, 0, sizeof(*out));
	if (dm_available("list", false))
		return -1;
	dm_setup();
	dmt = dm_task_create(DM_DEVICE_LIST);
	if (!dmt || !dm_task_run(dmt)) {
		report_dm_failure("list");
		if (dmt)
			dm_task_destroy(dmt);
		dm_lib_release();
		return -1;
	}
	names = dm_task_get_names(dmt);
	if (names && names->dev) {
		do {
			struct dm_device *d;

			names = (struct dm_names *)((char *)names + next);
			if (out->n == cap) {
				cap = cap ? cap * 2 : 8;
				out->v = xrealloc_array(out->v, cap, sizeof(*out->v));
			}
			d = &out->v[out->n++];
			memset(d, 0, sizeof(*d));
			d->name = xstrdup(names->name);
			d->major = major(names->dev);
			d->minor = minor(names->dev);
			next = names->next;
		} while (next);
	}
	dm_task_destroy(dmt);
	for (size_t i = 0; i < out->n; i++)
		read_tables(&out->v[i]);
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), device_cmp);
	dm_lib_release();
	return 0;
}

void dm_device_list_free(struct dm_device_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		struct dm_device *d = &l->v[i];

		for (size_t j = 0; j < d->nt; j++) {
			free(d->t[j].type);
			free(d->t[j].params);
			free(d->t[j].status);
		}
		free(d->t);
		free(d->name);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

int dm_find_by_name(const char *name, unsigned int *major,
		    unsigned int *minor, bool quiet)
{
	struct dm_task *dmt;
	struct dm_info info;
	int rc = -1;

	if (dm_available(name, quiet))
		return -1;
	dm_setup();
	dmt = dm_task_create(DM_DEVICE_INFO);
	if (!dmt)
		goto out;
	if (!dm_task_set_name(dmt, name) || !dm_task_no_open_count(dmt) ||
	    !dm_task_run(dmt) || !dm_task_get_info(dmt, &info)) {
		if (!quiet)
			report_dm_failure(name);
		goto out;
	}
	if (!info.exists) {
		rc = -ENXIO;
		goto out;
	}
	*major = info.major;
	*minor = info.minor;
	rc = 0;
out:
	if (dmt)
		dm_task_destroy(dmt);
	dm_lib_release();
	return rc;
}

int dm_loop_params(const char *params, char **path, uint64_t *offset)
{
	const char *sp = strchr(params, ' ');
	const char *end;

	if (!sp || sp == params)
		return -1;
	end = strchr(sp + 1, ' ');
	if (!end)
		end = sp + 1 + strlen(sp + 1);
	{
		char *num = strndup(sp + 1, (size_t)(end - sp - 1));
		int bad = !num || parse_u64(num, offset);

		free(num);
		if (bad)
			return -1;
	}
	*path = strndup(params, (size_t)(sp - params));
	return *path ? 0 : -1;
}

const char *dm_loop_status_reason(const char *status)
{
	const char *sp = status;
	int i;

	for (i = 0; sp && i < 6; i++) {
		sp = strchr(sp, ' ');
		if (sp)
			sp++;
	}
	return sp && *sp ? sp : NULL;
}
