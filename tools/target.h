/* SPDX-License-Identifier: GPL-2.0 */
/*
 * target.h -- from what the user typed (a dm name, /dev/mapper/<name>,
 * /dev/dm-N, dm-N or major:minor) to the dm-loop target instances of that
 * device in debugfs, and what they say.
 */
#ifndef DMLOOP_INSPECT_TARGET_H
#define DMLOOP_INSPECT_TARGET_H

#include <stdbool.h>

#include "debugfs.h"

struct target {
	const struct instance *inst;	/* points into the instance list */
	struct target_info info;
	bool have_info;
	struct extent_table table;
	bool have_table;
};

struct device_targets {
	char *arg;			/* as typed */
	char *name;			/* the dm name, NULL if unknown */
	char *label;			/* "dm-3 (img0)" */
	unsigned int minor;
	struct instance_list all;
	struct target *t;
	size_t n;
};

/*
 * Resolve arg and read `info` and `extents` of each of its targets. With
 * start_sector non-NULL, only the target starting there. Returns 0; -1 with
 * a message when the device or its debugfs files cannot be found; a target
 * whose files do not parse has have_info/have_table false and *partial set.
 */
int device_targets_load(const char *arg, const uint64_t *start_sector,
			struct device_targets *dt, bool *partial);
void device_targets_free(struct device_targets *dt);

/*
 * The dm minor that arg names by number (dm-N, /dev/dm-N, M:m, a block
 * device node), without debugfs. 0, or -1 if arg is a name (or bad).
 */
int device_arg_minor(const char *arg, unsigned int *minor);

#endif
