/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fiemap.h -- a file's layout from FS_IOC_FIEMAP, as filefrag reads it.
 */
#ifndef DMLOOP_INSPECT_FIEMAP_H
#define DMLOOP_INSPECT_FIEMAP_H

#include <stdint.h>
#include <sys/types.h>

#include "layout.h"

struct file_layout {
	struct layout layout;
	dev_t st_dev;		/* the file system's device */
	uint64_t size;
	unsigned long fs_magic;	/* statfs f_type */
	uint64_t fs_block_size;
	size_t extents;		/* as FIEMAP returned them, before merging */
};

/*
 * The extents of path meeting [start, end) of the file. Returns 0, or -1
 * with a message (FIEMAP unsupported, not a regular file, ...).
 */
int fiemap_read(const char *path, uint64_t start, uint64_t end,
		struct file_layout *out);
void file_layout_free(struct file_layout *fl);

#endif
