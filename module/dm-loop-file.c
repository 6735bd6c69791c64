// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop file mode: bios are queued to the device's workers (up to
 * "workers <n>" work items), which do the I/O through the VFS, direct where
 * the filesystem and alignment allow it, buffered otherwise, in the cgroups
 * of the task that submitted each bio.
 *
 * Memory pressure: a worker never lets an allocation recurse into the
 * filesystem or block layer (PF_MEMALLOC_NOIO, and the backing mapping's gfp
 * mask without __GFP_IO | __GFP_FS), throttles only against the backing
 * device (PF_LOCAL_THROTTLE): the lessons of drivers/block/loop.c.  Unlike
 * loop's per-device workqueue it runs on one WQ_MEM_RECLAIM workqueue per
 * stack depth (loop_file_wq[]), whose rescuer serves the work items when
 * no new kworker can be created.
 */
#include <linux/bio.h>
#include <linux/blk-cgroup.h>
#include <linux/cgroup.h>
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/memcontrol.h>
#include <linux/moduleparam.h>
#include <linux/pagemap.h>
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

/* Workers of a file-mode table that does not say "workers <n>". */
static unsigned int loop_default_workers = LOOP_DEFAULT_WORKERS;

static int loop_workers_set(const char *val, const struct kernel_param *kp)
{
	unsigned int n;
	int r;

	r = kstrtouint(val, 10, &n);
	if (r)
		return r;
	if (!n || n > LOOP_MAX_WORKERS)
		return -ERANGE;
	WRITE_ONCE(*(unsigned int *)kp->arg, n);
	return 0;
}

static const struct kernel_param_ops loop_workers_ops = {
	.set = loop_workers_set,
	.get = param_get_uint,
};

module_param_cb(workers, &loop_workers_ops, &loop_default_workers, 0644);
MODULE_PARM_DESC(workers, "Workers of a file-mode device whose table does not set them (1-"
		 __stringify(LOOP_MAX_WORKERS) ", default "
		 __stringify(LOOP_DEFAULT_WORKERS) ")");

/*
 * One workqueue for each stack depth, not per device (a rescuer thread per
 * device does not scale).  A worker may wait for the devices under its
 * file's filesystem, never for one above: with one workqueue for all, a
 * stack's upper workers blocked on the lower device's could fill the
 * workqueue's max_active (or hold its one rescuer) and the lower worker
 * would never run.  Each depth's workers only wait on shallower
 * workqueues', so each depth keeps its own max_active and rescuer.
 */
static struct workqueue_struct *loop_file_wq[LOOP_MAX_STACK];

static struct workqueue_struct *loop_wq_of(struct loop_c *lc)
{
	return loop_file_wq[lc->depth];
}

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

static ssize_t loop_file_direct(struct loop_c *lc, struct bio *bio, unsigned int dir,
				struct iov_iter *iter, loff_t pos)
{
	struct file *file = lc->file;
	struct kiocb kiocb;
	ssize_t ret;

	init_sync_kiocb(&kiocb, file);
	kiocb.ki_pos = pos;
	kiocb.ki_flags |= IOCB_DIRECT;
	kiocb.ki_ioprio = bio->bi_ioprio;
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
			ret = loop_file_direct(lc, bio, dir, &iter, pos);
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

/* Under lc->lock: queue an idle worker.  The caller knows there is one. */
static void loop_file_start_worker(struct loop_c *lc)
{
	unsigned int i;

	for (i = 0; lc->workers[i].busy; i++)
		;
	lc->workers[i].busy = true;
	lc->nr_busy++;
	queue_work(loop_wq_of(lc), &lc->workers[i].work);
}

/*
 * Hand a bio to the device's workers: a new one (@new counts it in flight)
 * or one back from a short read.  A worker is started when no busy worker
 * is free to take the bio soon: none is busy, or every busy one is inside
 * an I/O that may block for long (loop_file_may_block()).  A worker whose
 * bios are quick (asynchronous direct I/O, copies to and from the page
 * cache) is back for the next at once, so a deep queue of those costs no
 * wakeup and no second worker (which measured slower); a deep queue of
 * bios that block gets all the workers.  queue_work()
 * under the lock: a requeued bio is all that keeps the device alive, and
 * once the lock is dropped a worker may end it and the destructor free lc.
 */
static void loop_file_queue(struct loop_c *lc, struct bio *bio, bool new)
{
	unsigned long flags;

	spin_lock_irqsave(&lc->lock, flags);
	if (new)
		lc->inflight++;
	bio_list_add(&lc->pending, bio);
	if (lc->nr_busy == lc->nr_sync && lc->nr_busy < lc->nr_workers)
		loop_file_start_worker(lc);
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
	io->iocb.ki_ioprio = bio->bi_ioprio;
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

/*
 * Whether the I/O of @bio may keep its worker for long, so that the bios
 * waiting need another: a flush, a FUA write, a discard, a read whose first
 * or last page is not in the page cache, a short read back for its rest.
 * Not an asynchronous direct I/O, nor a buffered write (a copy into the
 * page cache, throttled only against the host), nor a read of cached pages
 * (a copy): starting workers for those measured slower than one worker
 * (two vCPUs, each extra worker only fought for the lock).  A guess, under
 * lc->lock: a wrong one costs throughput, never correctness (the bios wait
 * for the worker it guessed would be quick).
 */
static bool loop_file_may_block(struct loop_c *lc, struct bio *bio)
{
	struct address_space *mapping = lc->file->f_mapping;
	struct loop_io *io = dm_per_bio_data(bio, sizeof(*io));
	loff_t pos = loop_bio_pos(lc, bio);
	loff_t last = pos + bio->bi_iter.bi_size - 1;

	if (io->requeued)
		return true;
	if (loop_file_can_aio(lc, bio, pos))
		return false;
	switch (bio_op(bio)) {
	case REQ_OP_WRITE:
		return !bio_sectors(bio) || (bio->bi_opf & REQ_FUA);
	case REQ_OP_READ:
		return !filemap_range_has_page(mapping, pos, pos) ||
		       !filemap_range_has_page(mapping, last, last);
	default:
		return true;
	}
}

/*
 * Run a bio's I/O on behalf of the cgroup that submitted it, as loop does:
 * the host device's bios are charged to its blkcg (io.max, io.weight), the
 * page cache the I/O allocates to its memcg (the memcg of the blkcg's
 * cgroup: the io controller must be on for either, as for loop).  The
 * references are our own, taken before the I/O (kthread_associate_blkcg()
 * takes one on the blkcg): the bio may end, and its blkg go, before the
 * I/O call returns.  A memcg charge that fails under its limit fails the
 * I/O with -ENOMEM (an error, never zeros), as in loop.
 */
struct loop_cg {
	struct cgroup_subsys_state *blkcg;
	struct cgroup_subsys_state *memcg;
	struct mem_cgroup *old_memcg;
};

static void loop_cg_enter(struct loop_cg *cg, struct bio *bio)
{
	cg->blkcg = NULL;
	cg->memcg = NULL;
#ifdef CONFIG_BLK_CGROUP
	cg->blkcg = bio_blkcg_css(bio);
	if (!cg->blkcg)
		return;
	kthread_associate_blkcg(cg->blkcg);
#ifdef CONFIG_MEMCG
	cg->memcg = cgroup_get_e_css(cg->blkcg->cgroup, &memory_cgrp_subsys);
	if (cg->memcg)
		cg->old_memcg = set_active_memcg(mem_cgroup_from_css(cg->memcg));
#endif
#endif
}

static void loop_cg_exit(struct loop_cg *cg)
{
#ifdef CONFIG_BLK_CGROUP
	if (!cg->blkcg)
		return;
	kthread_associate_blkcg(NULL);
#ifdef CONFIG_MEMCG
	if (cg->memcg) {
		set_active_memcg(cg->old_memcg);
		css_put(cg->memcg);
	}
#endif
#endif
}

/*
 * The I/O runs in the submitter's cgroups; a bio whose I/O was synchronous
 * ends outside them (its completion belongs to the layer above, not to the
 * submitter), an asynchronous one wherever the host I/O completes.
 */
static void loop_file_one(struct loop_c *lc, struct bio *bio)
{
	struct loop_io *io = dm_per_bio_data(bio, sizeof(*io));
	bool again = io->requeued;
	blk_status_t status;
	struct loop_cg cg;
	unsigned int dir;
	loff_t pos;

	if (again) {
		bool retry;

		io->requeued = false;
		status = loop_rw_status(lc, bio, io->ret, &io->empty_reads, &retry);
		if (!retry) {
			loop_io_end(io, status);
			return;
		}
	}

	pos = loop_bio_pos(lc, bio);
	loop_cg_enter(&cg, bio);
	if (loop_file_can_aio(lc, bio, pos)) {
		dir = op_is_write(bio_op(bio)) ? ITER_SOURCE : ITER_DEST;
		/* The rest of a short read is not counted as a read again. */
		if (!again && dir == ITER_SOURCE)
			loop_stat_inc(lc, writes);
		else if (!again)
			loop_stat_inc(lc, reads);
		loop_file_aio(io, bio, dir, pos);
		loop_cg_exit(&cg);
		return;
	}
	status = again ? loop_file_rw(lc, bio, &io->empty_reads) : loop_file_do(lc, bio);
	loop_cg_exit(&cg);
	loop_io_end(io, status);
}

/*
 * A worker takes the oldest waiting bio, one at a time, until none waits
 * or it has served LOOP_WORKER_BATCH of them; then it queues itself again
 * (still busy) behind the other devices' work, so that however deep one
 * device's queue, the workqueue's max_active slots go round.  The other
 * workers of the device do the same, so the bios of a deep queue are
 * served in parallel, each by the first worker free.  No order between bios
 * in flight at once is kept, and none is owed: a flush is run once the
 * writes completed before it was submitted are done (in the page cache or
 * on the host device) and vfs_fsync() makes both stable; a FUA write
 * completes only after its range is synced.
 */
#define LOOP_WORKER_BATCH 16

void loop_file_work(struct work_struct *work)
{
	struct loop_worker *w = container_of(work, struct loop_worker, work);
	unsigned int throttle = current->flags & PF_LOCAL_THROTTLE;
	unsigned int noio = memalloc_noio_save();
	struct loop_c *lc = w->lc;
	unsigned int served = 0;
	bool sync = false;
	struct bio *bio;

	current->flags |= PF_LOCAL_THROTTLE;
	for (;;) {
		spin_lock_irq(&lc->lock);
		if (sync) {
			lc->nr_sync--;
			sync = false;
			/*
			 * Back from a synchronous I/O while another worker is
			 * free to take the next bio: one is enough, step down.
			 */
			if (lc->nr_busy - lc->nr_sync > 1) {
				w->busy = false;
				lc->nr_busy--;
				spin_unlock_irq(&lc->lock);
				break;
			}
		}
		if (served == LOOP_WORKER_BATCH && !bio_list_empty(&lc->pending)) {
			/* A bio waits: lc cannot go before this runs again. */
			queue_work(loop_wq_of(lc), &w->work);
			spin_unlock_irq(&lc->lock);
			break;
		}
		bio = bio_list_pop(&lc->pending);
		if (!bio) {
			w->busy = false;
			lc->nr_busy--;
			spin_unlock_irq(&lc->lock);
			break;
		}
		/* Going where it may block: unless another worker is free, start one. */
		sync = loop_file_may_block(lc, bio);
		if (sync) {
			lc->nr_sync++;
			if (!bio_list_empty(&lc->pending) && lc->nr_busy == lc->nr_sync &&
			    lc->nr_busy < lc->nr_workers)
				loop_file_start_worker(lc);
		}
		spin_unlock_irq(&lc->lock);

		loop_file_one(lc, bio);
		served++;
		cond_resched();
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
	/*
	 * dm hands us a clone without the submitter's blkg (bio_alloc_clone()
	 * onto no device): tie it to the submitting task's cgroup here, in
	 * its context, as bio_set_dev() does for block mode and dm-linear;
	 * the worker charges the I/O to it.
	 */
	if (!bio_blkcg_css(bio))
		bio_associate_blkg(bio);
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
	unsigned int dio_align, i;
	int r;

	r = loop_inode_use(lc);
	if (r)
		return r;

	if (!(lc->opts & LOOP_OPT_WORKERS))
		lc->nr_workers = READ_ONCE(loop_default_workers);
	lc->workers = kcalloc(lc->nr_workers, sizeof(*lc->workers), GFP_KERNEL);
	if (!lc->workers) {
		ti->error = "Cannot allocate file mode workers";
		return -ENOMEM;
	}
	for (i = 0; i < lc->nr_workers; i++) {
		INIT_WORK(&lc->workers[i].work, loop_file_work);
		lc->workers[i].lc = lc;
	}

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
	unsigned int i;

	spin_lock_irq(&lc->lock);
	wait_event_lock_irq(lc->drain, !lc->inflight, lc->lock);
	spin_unlock_irq(&lc->lock);
	/* A worker looks at the list once more after its last bio ended. */
	if (lc->workers) {
		for (i = 0; i < lc->nr_workers; i++)
			flush_work(&lc->workers[i].work);
		kfree(lc->workers);
	}
	loop_inode_unuse(lc);
}

/* The workqueue of @lc's depth, for file mode's workers and sparse writes. */
void loop_queue_work(struct loop_c *lc, struct work_struct *work)
{
	queue_work(loop_wq_of(lc), work);
}

void loop_file_exit(void)
{
	unsigned int i;

	for (i = 0; i < LOOP_MAX_STACK; i++)
		if (loop_file_wq[i]) {
			destroy_workqueue(loop_file_wq[i]);
			loop_file_wq[i] = NULL;
		}
}

int loop_file_init(void)
{
	unsigned int i;

	for (i = 0; i < LOOP_MAX_STACK; i++) {
		loop_file_wq[i] = alloc_workqueue("dm-loop/%u", WQ_MEM_RECLAIM | WQ_UNBOUND,
						  WQ_UNBOUND_MAX_ACTIVE, i);
		if (!loop_file_wq[i]) {
			loop_file_exit();
			return -ENOMEM;
		}
	}
	return 0;
}
