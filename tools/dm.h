/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm.h -- device-mapper devices and their tables, through libdevmapper.
 */
#ifndef DMLOOP_INSPECT_DM_H
#define DMLOOP_INSPECT_DM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dm_target_line {
	uint64_t start, length;	/* sectors */
	char *type;
	char *params;		/* the TABLE line after the type */
	char *status;		/* the INFO status, NULL if the call failed */
};

struct dm_device {
	char *name;
	unsigned int major, minor;
	bool read_only;
	struct dm_target_line *t;
	size_t nt;
};

struct dm_device_list {
	struct dm_device *v;
	size_t n;
};

/* Every dm device with its live table and status. 0, or -1 with a message. */
int dm_list_devices(struct dm_device_list *out);
void dm_device_list_free(struct dm_device_list *l);

/*
 * The device number of the dm device called name. 0; -ENXIO if there is
 * no such device; -1 if device-mapper cannot be reached (message printed
 * unless quiet).
 */
int dm_find_by_name(const char *name, unsigned int *major, unsigned int *minor,
		    bool quiet);

/* 1 if the kernel has device-mapper, 0 if not, -1 if /proc/misc cannot tell. */
int dm_kernel_available(void);

/* The <reason> of a loop INFO status (its seventh word), or NULL. */
const char *dm_loop_status_reason(const char *status);

/* The loop table's "<path> <offset> [...]", split; 0 or -1. */
int dm_loop_params(const char *params, char **path, uint64_t *offset);

#endif
