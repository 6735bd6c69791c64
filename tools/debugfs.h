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

/*
 * What the file system has at a range of a v2 table (a sparse file on
 * XFS, module/dm-loop.rst "Sparse files on XFS"). A v1 table is written
 * throughout.
 */
enum extent_state {
	EXTENT_WRITTEN,
	EXTENT_UNWRITTEN,	/* allocated at host_sector, reads as zeros */
	EXTENT_HOLE,		/* no blocks: host_sector is 0 */
};

struct table_extent {
	uint64_t dev_sector;	/* from the target's start */
	uint64_t sectors;
	uint64_t host_sector;
	enum extent_state state;
};

/* The `extents` file. */
struct extent_table {
	unsigned int version;	/* 1, or 2: a state column */
	unsigned int host_major, host_minor;
	struct table_extent *ext;
	size_t n;
};

/* "written", "unwritten", "hole": the words of the state column. */
const char *extent_state_name(enum extent_state s);
/* How many ranges of t are in state s. */
size_t extent_table_count(const struct extent_table *t, enum extent_state s);

int extent_table_parse(const char *path, struct extent_table *t);
/*
 * As byte ranges of the file (the device starts at `offset` bytes into the
 * file) on the host device. what names the source in messages. A v2
 * table's unwritten ranges are flagged FIEMAP_EXTENT_UNWRITTEN and its
 * holes LAYOUT_EXTENT_HOLE, and the layout says it has states.
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
