// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop block mode: the file's blocks, read once with bmap() while the
 * file is pinned, remapped straight to the host block device.
 *
 * Nothing on the I/O path calls into the VFS, allocates or sleeps: map() is
 * a binary search over a flat array.
 */
#include <linux/blkdev.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "dm-loop.h"

/* How many blocks between two checks for rescheduling and fatal signals. */
#define LOOP_WALK_BATCH 1024

struct loop_extent_buf {
	struct loop_extent *v;
	unsigned int nr;
	unsigned int size;
};

static int loop_extent_append(struct loop_extent_buf *buf, sector_t dev_sector,
			      sector_t host_sector, sector_t len)
{
	struct loop_extent *e;

	if (buf->nr) {
		e = &buf->v[buf->nr - 1];
		if (e->host_sector + e->len == host_sector &&
		    e->dev_sector + e->len == dev_sector) {
			e->len += len;
			return 0;
		}
	}
	if (buf->nr == buf->size) {
		unsigned int size = buf->size ? buf->size * 2 : 64;
		struct loop_extent *v;

		if (size > INT_MAX / sizeof(*v))
			return -E2BIG;
		v = kvmalloc_array(size, sizeof(*v), GFP_KERNEL);
		if (!v)
			return -ENOMEM;
		if (buf->nr)
			memcpy(v, buf->v, buf->nr * sizeof(*v));
		kvfree(buf->v);
		buf->v = v;
		buf->size = size;
	}
	e = &buf->v[buf->nr++];
	e->dev_sector = dev_sector;
	e->host_sector = host_sector;
	e->len = len;
	return 0;
}

/*
 * One pass of bmap() over the mapped range, coalescing contiguous blocks.
 * Returns -ENODATA when a block has no safe mapping (hole, unwritten or
 * shared: bmap says 0), with the file block in lc->unmapped_block.
 */
static int loop_walk_extents(struct loop_c *lc, struct loop_extent_buf *buf)
{
	struct inode *inode = file_inode(lc->file);
	unsigned int shift = inode->i_blkbits - SECTOR_SHIFT;
	sector_t spb = (sector_t)1 << shift;
	sector_t host_sectors = bdev_nr_sectors(lc->host_bdev);
	sector_t first = lc->offset >> inode->i_blkbits;
	sector_t nr_blocks = (lc->ti->len + spb - 1) >> shift;
	sector_t i;
	int r;

	for (i = 0; i < nr_blocks; i++) {
		sector_t block = first + i;

		r = bmap(inode, &block);
		if (r)
			return r;
		if (!block) {
			lc->unmapped_block = first + i;
			return -ENODATA;
		}
		if (block >= (host_sectors >> shift)) {
			DMERR("%s: bmap gave block %llu beyond the host device",
			      lc->path, (unsigned long long)block);
			lc->ti->error = "Filesystem mapped a block beyond its device";
			return -EIO;
		}
		r = loop_extent_append(buf, i << shift, block << shift, spb);
		if (r) {
			lc->ti->error = "Cannot allocate extent table";
			return r;
		}
		if (!(i % LOOP_WALK_BATCH)) {
			cond_resched();
			if (fatal_signal_pending(current)) {
				lc->ti->error = "Interrupted while reading the file's layout";
				return -EINTR;
			}
		}
	}
	/* The last block may reach past the device's end. */
	buf->v[buf->nr - 1].len = lc->ti->len - buf->v[buf->nr - 1].dev_sector;
	return 0;
}

/*
 * Pin the file, then read its layout.  The ordering is swapon's: no write
 * may start once S_SWAPFILE is set, so the layout bmap() reports stays
 * true until loop_block_teardown().
 *
 * Returns 0 in block mode, < 0 on error (ti->error set), or 1 when the file
 * cannot be block mapped: lc->reason says why, and the file is not pinned.
 */
int loop_block_setup(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct address_space *mapping = lc->file->f_mapping;
	struct loop_extent_buf buf = {};
	bool reloading, frozen;
	int r;

	lc->host_bdev = inode->i_sb->s_bdev;
	lc->host_dm_dev.bdev = lc->host_bdev;
	lc->host_dm_dev.mode = lc->read_only ? FMODE_READ : FMODE_READ | FMODE_WRITE;
	snprintf(lc->host_dm_dev.name, sizeof(lc->host_dm_dev.name), "%u:%u",
		 MAJOR(lc->host_bdev->bd_dev), MINOR(lc->host_bdev->bd_dev));

	r = loop_inode_pin(lc);
	if (r == -EAGAIN) {
		lc->reason = LOOP_REASON_IN_USE;
		r = 1;
		goto out;
	}
	if (r < 0)
		goto out;
	/*
	 * 1: this device's live table has held the pin all along (a reload):
	 * nothing can have changed the layout, and the checks below, which
	 * fall back to file mode, would fail instead (a pinned file refuses
	 * a file-mode table), so they are for a new pin only.
	 */
	reloading = r == 1;

	/*
	 * vfs_fallocate() tests IS_SWAPFILE before the filesystem takes its
	 * locks (ext4 and XFS hold i_rwsem and then invalidate_lock across
	 * every layout change, and test nothing again): take and drop both
	 * once, to wait out a layout change already inside the filesystem.
	 * Best effort: a caller still between the test and the lock (up to
	 * sb_start_write(), which sleeps while the filesystem is frozen) is
	 * the window swapon has too; a frozen filesystem gives file mode.
	 */
	r = 1;
	frozen = READ_ONCE(inode->i_sb->s_writers.frozen) != SB_UNFROZEN;
	inode_lock(inode);
	filemap_invalidate_lock(mapping);
	filemap_invalidate_unlock(mapping);
	inode_unlock(inode);
	/* Frozen before the barrier or after: a thaw may have let one in. */
	frozen |= READ_ONCE(inode->i_sb->s_writers.frozen) != SB_UNFROZEN;
	if (!reloading && frozen) {
		lc->reason = LOOP_REASON_FROZEN;
		goto bad;
	}

	/*
	 * A shared mapping through a writable file made before the pin can
	 * still dirty pages whose writeback would land over what the device
	 * writes (the kernel counts any VM_SHARED mapping of a writable file).
	 */
	if (!reloading && mapping_writably_mapped(mapping)) {
		lc->reason = LOOP_REASON_MMAPPED;
		goto bad;
	}

	r = vfs_fsync(lc->file, 0);
	if (r) {
		lc->ti->error = "Cannot sync the file";
		goto bad;
	}
	/* The page cache must not hide what we write to the blocks. */
	if (invalidate_inode_pages2(mapping) && !reloading) {
		lc->reason = LOOP_REASON_CACHE_BUSY;
		r = 1;
		goto bad;
	}

	r = loop_walk_extents(lc, &buf);
	if (r == -ENODATA) {
		lc->reason = LOOP_REASON_UNMAPPED;
		r = 1;
	}
	if (r)
		goto bad;

	if (buf.nr == buf.size) {
		lc->extents = buf.v;
	} else {
		lc->extents = kvmalloc_array(buf.nr, sizeof(*lc->extents), GFP_KERNEL);
		if (!lc->extents) {
			lc->ti->error = "Cannot allocate extent table";
			r = -ENOMEM;
			goto bad;
		}
		memcpy(lc->extents, buf.v, buf.nr * sizeof(*lc->extents));
		kvfree(buf.v);
	}
	lc->nr_extents = buf.nr;

	lc->ti->num_flush_bios = 1;
	return 0;

bad:
	kvfree(buf.v);
	loop_inode_unpin(lc);
out:
	lc->host_bdev = NULL;
	return r;
}

void loop_block_teardown(struct loop_c *lc)
{
	if (lc->pinned)
		invalidate_inode_pages2(lc->file->f_mapping);
	loop_inode_unpin(lc);
	kvfree(lc->extents);
	lc->extents = NULL;
	lc->nr_extents = 0;
}

/* The extent holding a target-relative sector; the table covers them all. */
const struct loop_extent *loop_find_extent(struct loop_c *lc, sector_t sector)
{
	unsigned int lo = 0, hi = lc->nr_extents;

	while (hi - lo > 1) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (lc->extents[mid].dev_sector <= sector)
			lo = mid;
		else
			hi = mid;
	}
	return &lc->extents[lo];
}

int loop_block_map(struct dm_target *ti, struct bio *bio)
{
	struct loop_c *lc = ti->private;
	const struct loop_extent *e;
	sector_t sector, left;

	bio_set_dev(bio, lc->host_bdev);
	if (unlikely(!bio_sectors(bio))) {
		loop_stat_inc(lc, flushes);
		return DM_MAPIO_REMAPPED;
	}

	sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	e = loop_find_extent(lc, sector);
	left = e->dev_sector + e->len - sector;
	if (bio_sectors(bio) > left) {
		dm_accept_partial_bio(bio, left);
		loop_stat_inc(lc, splits);
	}
	bio->bi_iter.bi_sector = e->host_sector + (sector - e->dev_sector);

	if (op_is_write(bio_op(bio)))
		loop_stat_inc(lc, writes);
	else
		loop_stat_inc(lc, reads);
	return DM_MAPIO_REMAPPED;
}
