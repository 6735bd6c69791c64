// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop file mode: bios are queued to the device's worker, which does the
 * I/O through the VFS, direct where the filesystem and alignment allow it,
 * buffered otherwise.
 *
 * Memory pressure: the worker never lets an allocation recurse into the
 * filesystem or block layer (PF_MEMALLOC_NOIO, and the backing mapping's gfp
 * mask without __GFP_IO | __GFP_FS), throttles only against the backing
 * device (PF_LOCAL_THROTTLE): the lessons of drivers/block/loop.c.  Unlike
 * loop's per-device workqueue it runs on one WQ_MEM_RECLAIM workqueue, whose
 * rescuer guarantees progress when no new worker can be created.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/moduleparam.h>
#include <linux/sched/mm.h>
#include <linux/uio.h>
#include <linux/workqueue.h>

#include "dm-loop.h"
#include "compat.h"

#ifdef DMLOOP_DEBUG
/* Debug builds only: widen the window between bio_endio() and the drain. */
unsigned int loop_debug_endio_delay_ms;
module_param_named(debug_endio_delay_ms, loop_debug_endio_delay_ms, uint, 0644);
MODULE_PARM_DESC(debug_endio_delay_ms,
		 "Debug build: file mode sleeps this long after each bio_endio()");
#endif

/* One workqueue for all devices: a rescuer thread per device does not scale. */
static struct workqueue_struct *loop_file_wq;

static bool loop_bio_dio_aligned(struct loop_c *lc, struct bio *bio, loff_t pos)
{
	unsigned int mask = lc->dio_align - 1;
	struct bvec_iter iter;
	struct bio_vec bv;

	if ((pos | bio->bi_iter.bi_size) & mask)
		return false;
	bio_for_each_bvec(bv, bio, iter)
		if ((bv.bv_offset | bv.bv_len) & mask)
			return false;
	return true;
}

/* The bio's data as an iov_iter, without copying or allocating (lo_rw_aio). */
static void loop_bio_iter(struct bio *bio, unsigned int dir, struct iov_iter *iter)
{
	struct bvec_iter it;
	struct bio_vec bv;
	unsigned long nr = 0;

	bio_for_each_bvec(bv, bio, it)
		nr++;
	iov_iter_bvec(iter, dir, __bvec_iter_bvec(bio->bi_io_vec, bio->bi_iter),
		      nr, bio->bi_iter.bi_size);
	iter->iov_offset = bio->bi_iter.bi_bvec_done;
}

static ssize_t loop_file_direct(struct loop_c *lc, unsigned int dir,
				struct iov_iter *iter, loff_t pos)
{
	struct file *file = lc->file;
	struct kiocb kiocb;
	ssize_t ret;

	init_sync_kiocb(&kiocb, file);
	kiocb.ki_pos = pos;
	kiocb.ki_flags |= IOCB_DIRECT;
	if (dir == ITER_DEST)
		return file->f_op->read_iter(&kiocb, iter);

	file_start_write(file);
	ret = file->f_op->write_iter(&kiocb, iter);
	file_end_write(file);
	return ret;
}

static loff_t loop_bio_pos(struct loop_c *lc, struct bio *bio)
{
	return lc->offset +
		((loff_t)dm_target_offset(lc->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT);
}

/*
 * What a read or write of the bio's remaining data that returned @ret means
 * for it.  A short write is an error.  A short read is the end of the file
 * only where the file ends: what lies past i_size_read() reads as zeros (the
 * file shrank under us).  Before it, the filesystem stopped early without
 * saying why (filemap_read() returns the bytes it copied before a page that
 * failed), so the bio is advanced past what was read and *@retry set: the
 * caller reads the rest again.  A read that gets nothing after one that got
 * something fails the bio; a first read that gets nothing is tried once
 * more (the file may have grown between the read's size check and ours).
 * *@empty_reads keeps that count for the bio.  Process context only.
 */
static blk_status_t loop_rw_status(struct loop_c *lc, struct bio *bio,
				   ssize_t ret, u8 *empty_reads, bool *retry)
{
	*retry = false;
	if (ret < 0)
		return errno_to_blk_status(ret);
	if (ret >= bio->bi_iter.bi_size)
		return BLK_STS_OK;
	if (op_is_write(bio_op(bio)))
		return BLK_STS_IOERR;
	if (loop_bio_pos(lc, bio) + ret >= i_size_read(file_inode(lc->file))) {
		bio_advance(bio, ret);
		zero_fill_bio(bio);
		return BLK_STS_OK;
	}
	/*
	 * bio_advance() moves bi_sector by whole sectors only, and the next
	 * read's position comes from bi_sector: advance by whole sectors and
	 * read the tail again.
	 */
	ret = round_down(ret, SECTOR_SIZE);
	bio_advance(bio, ret);
	if (ret)
		*empty_reads = 1;
	else if ((*empty_reads)++)
		return BLK_STS_IOERR;
	*retry = true;
	return BLK_STS_OK;
}

/* Synchronous I/O: buffered, and direct I/O that must be stable (FUA). */
static blk_status_t loop_file_rw(struct loop_c *lc, struct bio *bio, u8 *empty_reads)
{
	unsigned int dir = op_is_write(bio_op(bio)) ? ITER_SOURCE : ITER_DEST;
	unsigned int size = bio->bi_iter.bi_size;
	loff_t start = loop_bio_pos(lc, bio);
	struct iov_iter iter;
	blk_status_t status;
	bool retry;
	ssize_t ret;

	do {
		loff_t pos = loop_bio_pos(lc, bio);

		loop_bio_iter(bio, dir, &iter);
		if (lc->use_dio && loop_bio_dio_aligned(lc, bio, pos)) {
			loop_stat_inc(lc, direct_ios);
			ret = loop_file_direct(lc, dir, &iter, pos);
		} else {
			loop_stat_inc(lc, buffered_ios);
			if (dir == ITER_DEST)
				ret = vfs_iter_read(lc->file, &iter, &pos, 0);
			else
				ret = dmloop_vfs_iter_write(lc->file, &iter, &pos);
		}
		status = loop_rw_status(lc, bio, ret, empty_reads, &retry);
	} while (retry);
	if (status || !(bio->bi_opf & REQ_FUA))
		return status;
	return errno_to_blk_status(vfs_fsync_range(lc->file, start, start + size - 1, 1));
}

/*
 * Discard punches a hole; write zeroes punches one too unless the bio says
 * REQ_NOUNMAP, which keeps the blocks allocated (ZERO_RANGE).  Where the
 * filesystem cannot do that (tmpfs, NFS) BLK_STS_NOTSUPP makes the block
 * layer write the zeroes itself: a punch would unmap what must stay mapped.
 */
static blk_status_t loop_file_fallocate(struct loop_c *lc, struct bio *bio, int mode)
{
	return errno_to_blk_status(vfs_fallocate(lc->file, mode | FALLOC_FL_KEEP_SIZE,
						 loop_bio_pos(lc, bio),
						 bio->bi_iter.bi_size));
}

static blk_status_t loop_file_do(struct loop_c *lc, struct bio *bio)
{
	struct loop_io *io = dm_per_bio_data(bio, sizeof(*io));

	switch (bio_op(bio)) {
	case REQ_OP_READ:
		loop_stat_inc(lc, reads);
		return loop_file_rw(lc, bio, &io->empty_reads);
	case REQ_OP_WRITE:
		if (!bio_sectors(bio)) {
			loop_stat_inc(lc, flushes);
			return errno_to_blk_status(vfs_fsync(lc->file, 0));
		}
		loop_stat_inc(lc, writes);
		return loop_file_rw(lc, bio, &io->empty_reads);
	case REQ_OP_DISCARD:
		loop_stat_inc(lc, discards);
		return loop_file_fallocate(lc, bio, FALLOC_FL_PUNCH_HOLE);
	case REQ_OP_WRITE_ZEROES:
		loop_stat_inc(lc, discards);
		return loop_file_fallocate(lc, bio, bio->bi_opf & REQ_NOUNMAP ?
					   FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE);
	default:
		return BLK_STS_NOTSUPP;
	}
}

/* Ends a bio of file mode: in the worker, or in interrupt context (aio). */
static void loop_io_end(struct loop_io *io, blk_status_t status)
{
	struct bio *bio = dm_bio_from_per_bio_data(io, sizeof(*io));
	struct loop_c *lc = io->lc;
	unsigned long flags;

	if (status && status != BLK_STS_NOTSUPP)
		loop_stat_inc(lc, errors);
	bio->bi_status = status;
	bio_endio(bio);

	/*
	 * dm may now run the destructor; it waits for inflight to reach 0
	 * under lc->lock, so lc lives until this unlock.
	 */
	if (loop_debug_endio_delay_ms) {
		if (in_task())
			msleep(loop_debug_endio_delay_ms);
		else
			mdelay(loop_debug_endio_delay_ms);
	}
	spin_lock_irqsave(&lc->lock, flags);
	if (!--lc->inflight)
		wake_up(&lc->drain);
	spin_unlock_irqrestore(&lc->lock, flags);
}

/*
 * Hand a bio to the device's worker: a new one (@new counts it in flight)
 * or one back from a short read.  queue_work() under the lock: a requeued
 * bio is all that keeps the device alive, and once the lock is dropped the
 * worker may end it and the destructor free lc.
 */
static void loop_file_queue(struct loop_c *lc, struct bio *bio, bool new)
{
	unsigned long flags;

	spin_lock_irqsave(&lc->lock, flags);
	if (new)
		lc->inflight++;
	bio_list_add(&lc->pending, bio);
	queue_work(loop_file_wq, &lc->work);
	spin_unlock_irqrestore(&lc->lock, flags);
}

/* The last reference to an asynchronous I/O, maybe in interrupt context. */
static void loop_io_put(struct loop_io *io)
{
	struct bio *bio = dm_bio_from_per_bio_data(io, sizeof(*io));

	if (!atomic_dec_and_test(&io->ref))
		return;
	if (io->ret < 0) {
		loop_io_end(io, errno_to_blk_status(io->ret));
	} else if (io->ret >= bio->bi_iter.bi_size) {
		loop_io_end(io, BLK_STS_OK);
	} else if (op_is_write(bio_op(bio))) {
		loop_io_end(io, BLK_STS_IOERR);
	} else {
		/* A short read: the worker looks at i_size and the rest. */
		io->requeued = true;
		loop_file_queue(io->lc, bio, false);
	}
}

static void loop_aio_complete(struct kiocb *iocb, long ret)
{
	struct loop_io *io = container_of(iocb, struct loop_io, iocb);

	if (op_is_write(bio_op(dm_bio_from_per_bio_data(io, sizeof(*io)))))
		kiocb_end_write(iocb);
	io->ret = ret;
	loop_io_put(io);
}

/*
 * Direct I/O submitted asynchronously, as loop's lo_rw_aio: the worker does
 * not wait for the device, so a few workers keep a deep queue busy.  The
 * bio's own pages are the buffer; nothing is allocated here.
 */
static void loop_file_aio(struct loop_io *io, struct bio *bio, unsigned int dir,
			  loff_t pos)
{
	struct file *file = io->lc->file;
	struct iov_iter iter;
	ssize_t ret;

	loop_stat_inc(io->lc, direct_ios);
	loop_bio_iter(bio, dir, &iter);
	init_sync_kiocb(&io->iocb, file);
	io->iocb.ki_pos = pos;
	io->iocb.ki_flags |= IOCB_DIRECT;
	io->iocb.ki_complete = loop_aio_complete;
	atomic_set(&io->ref, 2);
	if (dir == ITER_SOURCE) {
		kiocb_start_write(&io->iocb);
		ret = file->f_op->write_iter(&io->iocb, &iter);
	} else {
		ret = file->f_op->read_iter(&io->iocb, &iter);
	}
	loop_io_put(io);
	if (ret != -EIOCBQUEUED)
		loop_aio_complete(&io->iocb, ret);
}

/* Reads and writes that direct I/O can take without waiting: not FUA. */
static bool loop_file_can_aio(struct loop_c *lc, struct bio *bio, loff_t pos)
{
	enum req_op op = bio_op(bio);

	if (!lc->use_dio || (bio->bi_opf & REQ_FUA) ||
	    (op != REQ_OP_READ && !(op == REQ_OP_WRITE && bio_sectors(bio))))
		return false;
	return loop_bio_dio_aligned(lc, bio, pos);
}

static void loop_file_one(struct loop_c *lc, struct bio *bio)
{
	struct loop_io *io = dm_per_bio_data(bio, sizeof(*io));
	loff_t pos;

	if (io->requeued) {
		blk_status_t status;
		bool retry;

		io->requeued = false;
		status = loop_rw_status(lc, bio, io->ret, &io->empty_reads, &retry);
		if (!retry) {
			loop_io_end(io, status);
			return;
		}
		/* The rest of the read, not counted as a read again. */
		pos = loop_bio_pos(lc, bio);
		if (loop_file_can_aio(lc, bio, pos))
			loop_file_aio(io, bio, ITER_DEST, pos);
		else
			loop_io_end(io, loop_file_rw(lc, bio, &io->empty_reads));
		return;
	}

	pos = loop_bio_pos(lc, bio);
	if (loop_file_can_aio(lc, bio, pos)) {
		if (op_is_write(bio_op(bio))) {
			loop_stat_inc(lc, writes);
			loop_file_aio(io, bio, ITER_SOURCE, pos);
		} else {
			loop_stat_inc(lc, reads);
			loop_file_aio(io, bio, ITER_DEST, pos);
		}
	} else {
		loop_io_end(io, loop_file_do(lc, bio));
	}
}

/*
 * The device's worker takes every bio queued so far in one run (loop's
 * worker drains its list the same way): under a deep queue one wakeup
 * serves many bios, where a work item per bio woke a worker of the unbound
 * pool for each.
 */
void loop_file_work(struct work_struct *work)
{
	struct loop_c *lc = container_of(work, struct loop_c, work);
	unsigned int throttle = current->flags & PF_LOCAL_THROTTLE;
	unsigned int noio = memalloc_noio_save();
	struct bio_list bios;
	struct bio *bio;

	current->flags |= PF_LOCAL_THROTTLE;
	for (;;) {
		spin_lock_irq(&lc->lock);
		bios = lc->pending;
		bio_list_init(&lc->pending);
		spin_unlock_irq(&lc->lock);
		if (bio_list_empty(&bios))
			break;
		while ((bio = bio_list_pop(&bios))) {
			loop_file_one(lc, bio);
			cond_resched();
		}
	}
	current->flags = (current->flags & ~PF_LOCAL_THROTTLE) | throttle;
	memalloc_noio_restore(noio);
}

int loop_file_map(struct dm_target *ti, struct bio *bio)
{
	struct loop_c *lc = ti->private;
	struct loop_io *io = dm_per_bio_data(bio, sizeof(*io));

	io->lc = lc;
	io->requeued = false;
	io->empty_reads = 0;
	loop_file_queue(lc, bio, true);
	return DM_MAPIO_SUBMITTED;
}

/*
 * The file's direct I/O alignment, or 0 where the filesystem would quietly
 * do buffered I/O instead (ext4: encrypted without inline crypto, verity,
 * data=journal): STATX_DIOALIGN where the filesystem reports it, else the
 * logical block size of its device, as loop assumes.
 */
static unsigned int loop_file_dio_align(struct loop_c *lc)
{
	struct super_block *sb = file_inode(lc->file)->i_sb;
	struct kstat stat;

	if (!vfs_getattr(&lc->file->f_path, &stat, STATX_DIOALIGN, AT_STATX_SYNC_AS_STAT) &&
	    (stat.result_mask & STATX_DIOALIGN))
		return max(stat.dio_mem_align, stat.dio_offset_align);
	return sb->s_bdev ? bdev_logical_block_size(sb->s_bdev) : SECTOR_SIZE;
}

int loop_file_setup(struct loop_c *lc)
{
	struct dm_target *ti = lc->ti;
	unsigned int dio_align;
	int r;

	r = loop_inode_use(lc);
	if (r)
		return r;

	dio_align = loop_file_dio_align(lc);
	lc->dio_align = dio_align ?: SECTOR_SIZE;
	lc->use_dio = !(lc->opts & LOOP_OPT_NO_DIRECT_IO) && dio_align &&
		      (lc->file->f_mode & FMODE_CAN_ODIRECT) &&
		      !(lc->offset & (lc->dio_align - 1));

	ti->per_io_data_size = sizeof(struct loop_io);
	ti->num_flush_bios = 1;
	ti->flush_supported = true;
	ti->limit_swap_bios = true;
	/* As loop: no discard where it could only fail (9p has no fallocate). */
	if (!lc->read_only && lc->file->f_op->fallocate) {
		ti->num_discard_bios = 1;
		ti->num_write_zeroes_bios = 1;
		ti->discards_supported = true;
	}
	return 0;
}

/* The destructor runs with no I/O left in dm, but our workers may still run. */
void loop_file_teardown(struct loop_c *lc)
{
	spin_lock_irq(&lc->lock);
	wait_event_lock_irq(lc->drain, !lc->inflight, lc->lock);
	spin_unlock_irq(&lc->lock);
	/* The worker looks at the list once more after its last bio ended. */
	flush_work(&lc->work);
	loop_inode_unuse(lc);
}

int loop_file_init(void)
{
	loop_file_wq = alloc_workqueue("dm-loop", WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	return loop_file_wq ? 0 : -ENOMEM;
}

void loop_file_exit(void)
{
	destroy_workqueue(loop_file_wq);
}
