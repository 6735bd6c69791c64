// SPDX-License-Identifier: GPL-2.0
/*
 * target.c -- resolve a device argument to its dm-loop target instances.
 *
 * debugfs is the source of truth here: each instance's `name` and `dev`
 * files say which dm device it belongs to, so no device-mapper call is
 * needed unless a name is not found there (then libdevmapper says whether
 * the device exists at all).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "dm.h"
#include "target.h"
#include "util.h"

enum match_by { BY_MINOR, BY_DEVNO, BY_NAME };

/* The block major of device-mapper from /proc/devices, or -1. */
static long dm_block_major(void)
{
	char *text = NULL, *blk, *line;
	long major = -1;

	if (read_text_file("/proc/devices", &text, NULL))
		return -1;
	blk = strstr(text, "Block devices:");
	for (line = blk; line && *line; line = strchr(line, '\n')) {
		char name[64];
		long m;

		line += *line == '\n';
		if (sscanf(line, "%ld %63s", &m, name) == 2 &&
		    !strcmp(name, "device-mapper")) {
			major = m;
			break;
		}
	}
	free(text);
	return major;
}

static bool all_digits(const char *s)
{
	uint64_t v;

	return parse_u64(s, &v) == 0;
}

static int parse_minor(const char *s, unsigned int *minor)
{
	uint64_t v;

	if (parse_u64(s, &v) || v > 0xfffff)
		return -1;
	*minor = (unsigned int)v;
	return 0;
}

/* Turn arg into what to match instances on. */
static int classify(const char *arg, enum match_by *by, unsigned int *minor,
		    char **key)
{
	const char *colon = strchr(arg, ':');
	struct stat st;

	*key = NULL;
	if (colon && arg[0] != '/') {
		uint64_t ma, mi;

		if (parse_u64_span(arg, (size_t)(colon - arg), &ma) ||
		    parse_u64(colon + 1, &mi) || ma > 0xfff || mi > 0xfffff) {
			error("%s: expected major:minor", arg);
			return -1;
		}
		*by = BY_DEVNO;
		*minor = (unsigned int)mi;
		*key = xasprintf("%" PRIu64 ":%" PRIu64, ma, mi);
		return 0;
	}
	if (arg[0] == '/' && stat(arg, &st) == 0) {
		if (!S_ISBLK(st.st_mode)) {
			error("%s: not a block device", arg);
			return -1;
		}
		*by = BY_DEVNO;
		*minor = minor(st.st_rdev);
		*key = xasprintf("%u:%u", major(st.st_rdev), minor(st.st_rdev));
		return 0;
	}
	/* Nodes that are not there (no udev) still name the device. */
	if (!strncmp(arg, "/dev/mapper/", 12) && arg[12]) {
		*by = BY_NAME;
		*key = xstrdup(arg + 12);
		return 0;
	}
	if (!strncmp(arg, "/dev/", 5))
		arg += 5;
	if (!strncmp(arg, "dm-", 3) && all_digits(arg + 3)) {
		if (parse_minor(arg + 3, minor)) {
			error("%s: minor number too large", arg);
			return -1;
		}
		*by = BY_MINOR;
		return 0;
	}
	if (arg[0] == '/' || arg[0] == '\0') {
		error("%s: no such device", arg[0] ? arg : "''");
		return -1;
	}
	*by = BY_NAME;
	*key = xstrdup(arg);
	return 0;
}

static bool matches(const struct instance *in, enum match_by by,
		    unsigned int minor, const char *key, long dm_major)
{
	switch (by) {
	case BY_MINOR:
		return in->minor == minor;
	case BY_NAME:
		return in->name && !strcmp(in->name, key);
	case BY_DEVNO:
		if (in->dev)
			return !strcmp(in->dev, key);
		/* No `dev` file: trust the minor if the major is dm's. */
		return in->minor == minor &&
		       (dm_major < 0 || (unsigned long)dm_major ==
					strtoul(key, NULL, 10));
	}
	return false;
}

static void load_files(struct target *t, bool *partial)
{
	char *p = xasprintf("%s/info", t->inst->dir);

	t->have_info = info_parse(p, &t->info) == 0;
	free(p);
	p = xasprintf("%s/extents", t->inst->dir);
	t->have_table = extent_table_parse(p, &t->table) == 0;
	free(p);
	if (!t->have_info || !t->have_table)
		*partial = true;
}

int device_targets_load(const char *arg, const uint64_t *start_sector,
			struct device_targets *dt, bool *partial)
{
	enum match_by by;
	unsigned int minor = 0;
	char *key = NULL;
	long dm_major = -1;
	size_t i;

	memset(dt, 0, sizeof(*dt));
	*partial = false;
	dt->arg = xstrdup(arg);
	if (classify(arg, &by, &minor, &key))
		goto bad;
	if (debugfs_instances(&dt->all, false))
		goto bad;
	if (by == BY_DEVNO)
		dm_major = dm_block_major();

	for (i = 0; i < dt->all.n; i++)
		if (matches(&dt->all.v[i], by, minor, key, dm_major))
			break;
	if (i == dt->all.n && by == BY_NAME) {
		unsigned int ma, mi;
		int rc = dm_find_by_name(key, &ma, &mi, true);

		/*
		 * A `name` file need not say the dm name (ENXIO while the
		 * device goes away; modules before 1.0.0's fix printed
		 * "major:minor"): device-mapper knows the number.
		 */
		if (rc == 0) {
			by = BY_MINOR;
			minor = mi;
			for (i = 0; i < dt->all.n; i++)
				if (matches(&dt->all.v[i], by, minor, key, dm_major))
					break;
		}
		if (i < dt->all.n)
			dt->name = xstrdup(key);
		else if (rc == -ENXIO)
			error("%s: no device-mapper device of that name", key);
		else if (rc == 0)
			error("%s (dm-%u): no dm-loop target in %s/dm-loop", key,
			      mi, debugfs_root());
		else
			error("%s: no dm-loop target of that name in %s/dm-loop",
			      key, debugfs_root());
		if (i == dt->all.n)
			goto bad;
	}
	if (i == dt->all.n) {
		error("%s: no dm-loop target of this device in %s/dm-loop", arg,
		      debugfs_root());
		goto bad;
	}
	dt->minor = dt->all.v[i].minor;
	for (i = 0; i < dt->all.n; i++) {
		const struct instance *in = &dt->all.v[i];

		if (!matches(in, by, minor, key, dm_major))
			continue;
		if (start_sector && in->start != *start_sector)
			continue;
		dt->t = xrealloc_array(dt->t, dt->n + 1, sizeof(*dt->t));
		memset(&dt->t[dt->n], 0, sizeof(*dt->t));
		dt->t[dt->n].inst = in;
		dt->n++;
	}
	if (dt->n == 0) {
		error("%s: no dm-loop target starts at sector %" PRIu64, arg,
		      *start_sector);
		goto bad;
	}
	if (!dt->name && dt->t[0].inst->name)
		dt->name = xstrdup(dt->t[0].inst->name);
	if (dt->name)
		dt->label = xasprintf("dm-%u (%s)", dt->minor, dt->name);
	else
		dt->label = xasprintf("dm-%u", dt->minor);
	for (i = 0; i < dt->n; i++)
		load_files(&dt->t[i], partial);
	free(key);
	return 0;
bad:
	free(key);
	device_targets_free(dt);
	return -1;
}

int device_arg_minor(const char *arg, unsigned int *minor)
{
	enum match_by by;
	char *key = NULL;
	int rc;

	rc = classify(arg, &by, minor, &key);
	free(key);
	return rc == 0 && by != BY_NAME ? 0 : -1;
}

void device_targets_free(struct device_targets *dt)
{
	size_t i;

	for (i = 0; i < dt->n; i++) {
		if (dt->t[i].have_info)
			info_free(&dt->t[i].info);
		if (dt->t[i].have_table)
			extent_table_free(&dt->t[i].table);
	}
	free(dt->t);
	free(dt->arg);
	free(dt->name);
	free(dt->label);
	instance_list_free(&dt->all);
	memset(dt, 0, sizeof(*dt));
}
