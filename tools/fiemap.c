// SPDX-License-Identifier: GPL-2.0
/*
 * fiemap.c -- FS_IOC_FIEMAP in a loop, like e2fsprogs' filefrag: an aligned
 * stack buffer, restart after the last extent returned, stop at
 * FIEMAP_EXTENT_LAST (or when a call returns none, or past the range).
 *
 * No FIBMAP fallback: every file system dm-loop maps (ext2/3/4, XFS) has
 * FIEMAP, and FIBMAP cannot see unwritten or shared extents, which are the
 * ones that matter here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/fiemap.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "fiemap.h"
#include "util.h"

int fiemap_read(const char *path, uint64_t start, uint64_t end,
		struct file_layout *out)
{
	uint64_t buf[2048];	/* uint64_t for the structures' alignment */
	struct fiemap *fm = (struct fiemap *)buf;
	unsigned int count = (sizeof(buf) - sizeof(*fm)) /
			     sizeof(struct fiemap_extent);
	uint64_t pos = start;
	struct statfs sfs;
	struct stat st;
	bool last = false;
	int fd;

	memset(out, 0, sizeof(*out));
	layout_init(&out->layout);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		error("%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) || fstatfs(fd, &sfs)) {
		error("%s: stat: %s", path, strerror(errno));
		goto bad;
	}
	if (!S_ISREG(st.st_mode)) {
		error("%s: not a regular file", path);
		goto bad;
	}
	out->st_dev = st.st_dev;
	out->size = (uint64_t)st.st_size;
	out->fs_magic = (unsigned long)sfs.f_type;
	out->fs_block_size = (uint64_t)sfs.f_bsize;

	while (!last && pos < end) {
		unsigned int i;

		memset(fm, 0, sizeof(*fm));
		fm->fm_start = pos;
		fm->fm_length = end - pos;
		fm->fm_flags = 0;
		fm->fm_extent_count = count;
		if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0) {
			if (errno == EOPNOTSUPP || errno == ENOTTY)
				error("%s: FIEMAP not supported by this file system", path);
			else
				error("%s: FIEMAP: %s", path, strerror(errno));
			goto bad;
		}
		if (fm->fm_mapped_extents == 0)
			break;
		for (i = 0; i < fm->fm_mapped_extents; i++) {
			const struct fiemap_extent *e = &fm->fm_extents[i];

			if (e->fe_length == 0 ||
			    e->fe_logical + e->fe_length < e->fe_logical) {
				error("%s: FIEMAP returned a bad extent at file offset %llu",
				      path, (unsigned long long)e->fe_logical);
				goto bad;
			}
			layout_add(&out->layout, e->fe_logical, e->fe_length,
				   e->fe_physical, e->fe_flags);
			out->extents++;
			if (e->fe_flags & FIEMAP_EXTENT_LAST)
				last = true;
		}
		i = fm->fm_mapped_extents - 1;
		if (fm->fm_extents[i].fe_logical + fm->fm_extents[i].fe_length <= pos) {
			error("%s: FIEMAP did not move forward at offset %" PRIu64,
			      path, pos);
			goto bad;
		}
		pos = fm->fm_extents[i].fe_logical + fm->fm_extents[i].fe_length;
	}
	close(fd);
	if (layout_normalise(&out->layout, path)) {
		file_layout_free(out);
		return -1;
	}
	return 0;
bad:
	close(fd);
	file_layout_free(out);
	return -1;
}

void file_layout_free(struct file_layout *fl)
{
	layout_free(&fl->layout);
	memset(fl, 0, sizeof(*fl));
}
