/* SPDX-License-Identifier: GPL-2.0 */
/*
 * debugfs.h -- dm-loop's debugfs files (module/dm-loop.rst): finding the
 * live instance directories, reading `info` and `extents`.
 */
#ifndef DMLOOP_INSPECT_DEBUGFS_H
#define DMLOOP_INSPECT_DEBUGFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

struct info_entry {
	char *key;
	char *value;
};

/* The `info` file: every key in file order, and the ones we rely on. */
struct target_info {
	struct info_entry *kv;
	size_t n;
	const char *mode;	/* "block" or "file" */
	const char *reason;
	const char *path;
	uint64_t offset;	/* bytes */
	uint64_t dev_sectors;
	uint64_t extents;
	unsigned int host_major, host_minor;
};

int info_parse(const char *path, struct target_info *info);
const char *info_get(const struct target_info *info, const char *key);
void info_free(struct target_info *info);

struct table_extent {
	uint64_t dev_sector;	/* from the target's start */
	uint64_t sectors;
	uint64_t host_sector;
};

/* The `extents` file. */
struct extent_table {
	unsigned int host_major, host_minor;
	struct table_extent *ext;
	size_t n;
};

int extent_table_parse(const char *path, struct extent_table *t);
/*
 * As byte ranges of the file (the device starts at `offset` bytes into the
 * file) on the host device. what names the source in messages.
 */
int extent_table_layout(const struct extent_table *t, uint64_t offset,
			struct layout *out, const char *what);
void extent_table_free(struct extent_table *t);

/* One live target instance: dm-<minor>-<start>-<id>/. */
struct instance {
	char *dir;		/* full path */
	char *base;		/* dm-<minor>-<start>-<id> */
	unsigned int minor;
	uint64_t start;
	uint64_t id;
	char *name;		/* contents of `name`, NULL if unreadable */
	char *dev;		/* contents of `dev`, NULL if unreadable */
};

struct instance_list {
	struct instance *v;
	size_t n;
};

/* $DMLOOP_DEBUGFS, else /sys/kernel/debug. */
const char *debugfs_root(void);
/*
 * Every live instance (the smallest <id> of each <minor>, <start>), sorted
 * by minor and start. With quiet, no message when the directory is absent
 * (returns -ENOENT). Returns 0 or -1 / -ENOENT.
 */
int debugfs_instances(struct instance_list *out, bool quiet);
void instance_list_free(struct instance_list *l);

#endif
