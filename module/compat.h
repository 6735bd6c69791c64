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

/*
 * Discard and write-zeroes limits of a target that does its own (file
 * mode): at most what a bio's 32-bit bi_size holds.  6.1's
 * __blkdev_issue_write_zeroes() stores max_write_zeroes_sectors << 9 in
 * bi_size without a cap of its own, so the stacking default UINT_MAX
 * wraps and a zeroout of more than 4 GiB zeroes only part of the range.
 * 6.12 caps each bio itself (bio_write_zeroes_limit()), and newer kernels
 * refuse a table whose write-zeroes limit differs from its unmap-zeroes
 * limit, so there the stacking default stays.  __blkdev_issue_discard()
 * caps discards itself in all of them.
 */
static inline void dmloop_set_discard_limits(struct queue_limits *limits,
					     unsigned int granularity)
{
	limits->discard_granularity = granularity;
	limits->max_hw_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
	limits->max_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 12, 0)
	/*
	 * Whole pages, so that every piece but the last is aligned to any
	 * logical block size the table may stack up to.
	 */
	limits->max_write_zeroes_sectors =
		min_t(unsigned int, limits->max_write_zeroes_sectors,
		      round_down(UINT_MAX >> SECTOR_SHIFT, PAGE_SIZE >> SECTOR_SHIFT));
#endif
}

/* Whether a block device spins (7.0 turned bdev_nonrot() into bdev_rot()). */
static inline bool dmloop_bdev_rotational(struct block_device *bdev)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 0, 0)
	return bdev_rot(bdev);
#else
	return !bdev_nonrot(bdev);
#endif
}

/*
 * A file-mode table reports no device, so dm would mark the queue
 * pollable (all of no devices poll) and non-rotational (none spins).
 * Neither is true: a polled bio of file mode is done by the worker, and a
 * file on a spinning disk is on a spinning disk.  Since 6.10 both are
 * queue limits features, which io_hints sets.  Before, they are queue
 * flags that dm_table_set_restrictions() sets after io_hints, so the
 * target's resume (after them, the device still suspended) clears
 * QUEUE_FLAG_NONROT.  Not QUEUE_FLAG_POLL: a submitter tests it outside
 * dm's suspend, and a bio dm takes as polled after the flag was cleared
 * would wait for a dm_poll_bio() that bio_poll() no longer calls.  On 6.1
 * polled I/O of file mode works, busy-polled, and io_poll says 1.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
static inline void dmloop_file_limits_features(struct queue_limits *limits,
					       bool rotational)
{
	limits->features &= ~BLK_FEAT_POLL;
	if (rotational)
		limits->features |= BLK_FEAT_ROTATIONAL;
}

static inline void dmloop_file_queue_flags(struct request_queue *q, bool rotational)
{
}
#else
static inline void dmloop_file_limits_features(struct queue_limits *limits,
					       bool rotational)
{
}

static inline void dmloop_file_queue_flags(struct request_queue *q, bool rotational)
{
	if (rotational)
		blk_queue_flag_clear(QUEUE_FLAG_NONROT, q);
}
#endif

/* VMA flags: set through vm_flags_set() from 6.3 (vm_flags became const). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
static inline void dmloop_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
	vm_flags_set(vma, flags);
}
#else
static inline void dmloop_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
	vma->vm_flags |= flags;
}
#endif

/*
 * The pNFS block layout export operations (fs/xfs/xfs_pnfs.c): map a file
 * range (with @write, allocate it unwritten) and convert written ranges
 * from unwritten, durably.  Until they moved into struct
 * exportfs_block_ops (<linux/exportfs_block.h>), commit_blocks() took the
 * inode's new times in an iattr; since then the filesystem sets them and
 * takes a new size, 0 for none (it only ever grows the file).
 */
#ifdef DMLOOP_EXPORTFS_BLOCK_H
#include <linux/exportfs.h>
#include <linux/exportfs_block.h>

/* Only with CONFIG_EXPORTFS_BLOCK_OPS has export_operations a block_ops. */
static inline const struct exportfs_block_ops *dmloop_block_ops(struct super_block *sb)
{
#ifdef CONFIG_EXPORTFS_BLOCK_OPS
	return sb->s_export_op ? sb->s_export_op->block_ops : NULL;
#else
	return NULL;
#endif
}

static inline bool dmloop_has_block_ops(struct super_block *sb)
{
	const struct exportfs_block_ops *bops = dmloop_block_ops(sb);

	return bops && bops->map_blocks && bops->commit_blocks;
}

static inline int dmloop_map_blocks(struct inode *inode, loff_t offset, u64 len,
				    struct iomap *iomap, bool write)
{
	u32 gen;

	return dmloop_block_ops(inode->i_sb)->map_blocks(inode, offset, len, iomap,
							  write, &gen);
}

static inline int dmloop_commit_blocks(struct inode *inode, struct iomap *maps, int nr)
{
	/* A variable, not 0: an iattr pointer here would not build. */
	loff_t no_new_size = 0;

	return dmloop_block_ops(inode->i_sb)->commit_blocks(inode, maps, nr, no_new_size);
}
#else
#include <linux/exportfs.h>

static inline bool dmloop_has_block_ops(struct super_block *sb)
{
	const struct export_operations *ops = sb->s_export_op;

	return ops && ops->map_blocks && ops->commit_blocks;
}

static inline int dmloop_map_blocks(struct inode *inode, loff_t offset, u64 len,
				    struct iomap *iomap, bool write)
{
	u32 gen;

	return inode->i_sb->s_export_op->map_blocks(inode, offset, len, iomap, write, &gen);
}

static inline int dmloop_commit_blocks(struct inode *inode, struct iomap *maps, int nr)
{
	struct iattr iattr = {
		.ia_valid = ATTR_CTIME | ATTR_MTIME,
	};

	iattr.ia_ctime = current_time(inode);
	iattr.ia_mtime = iattr.ia_ctime;
	return inode->i_sb->s_export_op->commit_blocks(inode, maps, nr, &iattr);
}
#endif

#endif /* DM_LOOP_COMPAT_H */
