/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel-version differences, in one place.  Every other file is written
 * against the helpers below and never tests LINUX_VERSION_CODE itself.
 */
#ifndef DM_LOOP_COMPAT_H
#define DM_LOOP_COMPAT_H

#include <linux/version.h>
#include <linux/fs.h>
#include <linux/blkdev.h>

/*
 * Buffered write through the VFS.  Until 6.7 vfs_iter_write() left freeze
 * protection to the caller (drivers/block/loop.c took it); since then it
 * takes it itself and taking it twice could deadlock against a freeze.
 */
static inline ssize_t dmloop_vfs_iter_write(struct file *file,
					    struct iov_iter *iter, loff_t *pos)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
	return vfs_iter_write(file, iter, pos, 0);
#else
	ssize_t ret;

	file_start_write(file);
	ret = vfs_iter_write(file, iter, pos, 0);
	file_end_write(file);
	return ret;
#endif
}

/* Discard limits of a target that does its own discards (file mode). */
static inline void dmloop_set_discard_limits(struct queue_limits *limits,
					     unsigned int granularity)
{
	limits->discard_granularity = granularity;
	limits->max_hw_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
	limits->max_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
}

#endif /* DM_LOOP_COMPAT_H */
