// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop block mode over a sparse or preallocated XFS file.
 *
 * The extent table records what the filesystem has at each range: written
 * blocks, unwritten (allocated, reading as zeros) blocks, or a hole.  map()
 * remaps a bio to written blocks as for any block-mode table, zero-fills a
 * read of a hole or of unwritten blocks, and hands a write to either to the
 * device's worker.  The worker uses the filesystem's pNFS block layout
 * contract (fs/xfs/xfs_pnfs.c, as nfsd's block layout server does):
 * map_blocks() with write allocates a hole's blocks unwritten, the data
 * goes straight to the host device, and commit_blocks() converts the
 * written blocks, with a synchronous transaction.  Each change replaces the
 * table under RCU, so map() never takes a lock.
 *
 * Order, for every write into a hole or unwritten blocks (dm-loop.rst,
 * "Sparse files on XFS"):
 *   1. the blocks are allocated unwritten, durably (map_blocks() commits
 *      the allocation synchronously);
 *   2. the data, and zeros over the rest of any file block it covers only
 *      in part, are written to the host device and flushed;
 *   3. commit_blocks() converts exactly those blocks, synchronously;
 *   4. the table says "written", then the bio completes.
 * The worker takes up to LOOP_SPARSE_BATCH waiting bios at once: their
 * data goes out together, then one flush and one commit_blocks() cover
 * them all.  A bio that writes part of an unwritten block is done alone
 * (its zeros must not land over another bio's data in the same block).
 * A crash before 3 leaves the blocks unwritten: they read as zeros, never
 * as what the disk held before.  A crash after 3 finds the data on disk.
 * A read after the write completed finds the table updated (4).
 */
#include <linux/blkdev.h>
#include <linux/iomap.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>

#include "dm-loop.h"
#include "compat.h"

/*
 * A hole is allocated in aligned chunks of at least 4 MiB: one synchronous
 * allocation transaction (map_blocks() forces XFS's log) is then shared by
 * 4 writes of 1 MiB or 1024 of 4 KiB, and what a chunk allocates beyond
 * the write stays unwritten (zeros, costing only the space an image would
 * take when full).  An allocation that starts where the last one ended (a
 * file being filled in order) doubles the chunk, up to 64 MiB, as XFS's
 * own speculative preallocation grows for a file written in order: a
 * first pass over an image then pays a log force every 64 MiB, not every
 * 4 MiB.  Any other allocation starts again at 4 MiB.
 */
#define LOOP_SPARSE_CHUNK	((sector_t)8192)
#define LOOP_SPARSE_CHUNK_MAX	((sector_t)131072)

/*
 * The worker's clones of a bio's data come from the device's own bio_set:
 * stacked sparse devices must not wait on one pool, whose reserve the
 * upper device's clones, in flight to the lower one, could hold.
 */
int loop_sparse_setup(struct loop_c *lc)
{
	int r;

	lc->bs = kzalloc(sizeof(*lc->bs), GFP_KERNEL);
	if (!lc->bs)
		return -ENOMEM;
	r = bioset_init(lc->bs, BIO_POOL_SIZE, 0, 0);
	if (r) {
		kfree(lc->bs);
		lc->bs = NULL;
	}
	return r;
}

/*
 * Write zeros over host sectors [@host, @host + @len), less than a file
 * block, and wait: with a bio on the stack, from no shared pool.
 */
static int loop_sparse_zero(struct loop_c *lc, sector_t host, sector_t len)
{
	struct bio_vec bv[16];
	struct bio bio;
	int r = 0;

	while (len && !r) {
		unsigned int n = min_t(sector_t, len, ARRAY_SIZE(bv) * (PAGE_SIZE >> SECTOR_SHIFT));
		unsigned int i, bytes = n << SECTOR_SHIFT;

		bio_init(&bio, lc->host_bdev, bv, ARRAY_SIZE(bv), REQ_OP_WRITE | REQ_SYNC);
		bio.bi_iter.bi_sector = host;
		for (i = 0; bytes; i++) {
			unsigned int k = min_t(unsigned int, bytes, PAGE_SIZE);

			__bio_add_page(&bio, ZERO_PAGE(0), k, 0);
			bytes -= k;
		}
		r = submit_bio_wait(&bio);
		bio_uninit(&bio);
		host += n;
		len -= n;
	}
	return r;
}

/* XFS's pNFS contract, on a filesystem and a file that can use it. */
bool loop_sparse_possible(struct loop_c *lc)
{
	struct super_block *sb = file_inode(lc->file)->i_sb;

	return !strcmp(sb->s_type->name, "xfs") && dmloop_has_block_ops(sb);
}

/*
 * Whether map_blocks() serves this file: it refuses a reflinked or a
 * realtime inode (-ENXIO), which keep file mode.  0 or an errno.
 */
int loop_sparse_probe(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct iomap iomap = {};

	return dmloop_map_blocks(inode, lc->offset, i_blocksize(inode), &iomap, false);
}

/* Make @t the live table.  Under lc->alloc_lock. */
static void loop_table_publish(struct loop_c *lc, struct loop_table *t)
{
	struct loop_table *old = rcu_dereference_protected(lc->table,
					lockdep_is_held(&lc->alloc_lock));

	loop_table_account(old, t);
	rcu_assign_pointer(lc->table, t);
	loop_table_retire(old, false);
}

/* loop_table_apply() to the live table, and publish.  Under lc->alloc_lock. */
static int loop_table_set(struct loop_c *lc, sector_t start, sector_t len,
			  sector_t host)
{
	struct loop_table *old = rcu_dereference_protected(lc->table,
					lockdep_is_held(&lc->alloc_lock));
	struct loop_table *t = loop_table_apply(old, start, len, host);

	if (!t)
		return -ENOMEM;
	loop_table_publish(lc, t);
	return 0;
}

/*
 * map() for a bio within one extent that is a hole or unwritten (the
 * worker looks the range up again).  A read
 * is zeros, with no I/O; a discard or write-zeroes has nothing to do; a
 * write goes to the worker.
 */
int loop_sparse_map(struct loop_c *lc, struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		loop_stat_inc(lc, reads);
		zero_fill_bio(bio);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		loop_stat_inc(lc, discards);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	case REQ_OP_WRITE:
		break;
	default:
		return DM_MAPIO_KILL;
	}
	loop_stat_inc(lc, writes);
	spin_lock_irq(&lc->lock);
	bio_list_add(&lc->pending, bio);
	spin_unlock_irq(&lc->lock);
	loop_queue_work(lc, &lc->sparse_work);
	return DM_MAPIO_SUBMITTED;
}

/*
 * Allocate the chunk around device sectors [@pos, @pos + @len) of hole @e
 * (unwritten), and record it.  The caller looks the range up again.
 */
static int loop_sparse_alloc(struct loop_c *lc, const struct loop_extent *e,
			     sector_t pos, sector_t len)
{
	struct inode *inode = file_inode(lc->file);
	sector_t chunk = pos == lc->alloc_next ?
			 clamp(lc->alloc_chunk * 2, LOOP_SPARSE_CHUNK, LOOP_SPARSE_CHUNK_MAX) :
			 LOOP_SPARSE_CHUNK;
	sector_t cstart = max(e->dev_sector, round_down(pos, chunk));
	sector_t cend = min(e->dev_sector + e->len, round_up(pos + len, chunk));
	loff_t off = lc->offset + ((loff_t)cstart << SECTOR_SHIFT);
	loff_t want = lc->offset + ((loff_t)pos << SECTOR_SHIFT);
	loff_t from, to;
	struct iomap iomap = {};
	sector_t host;
	int r;

	r = dmloop_map_blocks(inode, off, (u64)(cend - cstart) << SECTOR_SHIFT, &iomap, true);
	/* The chunk's reservation may not fit where the write alone does. */
	if ((r == -ENOSPC || r == -EDQUOT) && (cstart != pos || cend != pos + len)) {
		chunk = LOOP_SPARSE_CHUNK;
		cstart = pos;
		cend = pos + len;
		off = want;
		r = dmloop_map_blocks(inode, off, (u64)len << SECTOR_SHIFT, &iomap, true);
	}
	if (r)
		return r;
	/*
	 * Unwritten blocks on our disk from where we asked, as far as the
	 * filesystem got (one extent: free space may be fragmented, and the
	 * caller asks again for the rest); or written ones, the file's own
	 * data (a write converted whose table update then failed).  Anything
	 * else (another device, no address) means the table and the
	 * filesystem disagree: no write goes anywhere then.
	 */
	from = max_t(loff_t, iomap.offset, off);
	to = min_t(loff_t, iomap.offset + iomap.length,
		   lc->offset + ((loff_t)cend << SECTOR_SHIFT));
	if ((iomap.type != IOMAP_UNWRITTEN && iomap.type != IOMAP_MAPPED) ||
	    iomap.addr == IOMAP_NULL_ADDR ||
	    iomap.bdev != lc->host_bdev || from != off || to <= from ||
	    ((iomap.addr | iomap.offset | iomap.length) & (SECTOR_SIZE - 1)) ||
	    iomap.addr + (to - iomap.offset) > bdev_nr_bytes(lc->host_bdev)) {
		DMERR_LIMIT("%s: map_blocks gave type %u at byte %lld+%llu for byte %lld",
			    lc->path, iomap.type, iomap.offset, iomap.length, off);
		return -EIO;
	}
	host = (iomap.addr + (from - iomap.offset)) >> SECTOR_SHIFT;
	lc->alloc_next = (to - lc->offset) >> SECTOR_SHIFT;
	lc->alloc_chunk = chunk;
	/* Written already (a write whose table update failed): as XFS says. */
	if (iomap.type == IOMAP_UNWRITTEN)
		host |= LOOP_EXT_UNWRITTEN;
	return loop_table_set(lc, (from - lc->offset) >> SECTOR_SHIFT,
			      (to - from) >> SECTOR_SHIFT, host);
}

/*
 * Write @len sectors of @bio's data, from @skip sectors into it, to host
 * sector @host, and wait.  @opf: REQ_FUA and the like, or 0.
 */
static int loop_sparse_write_data(struct loop_c *lc, struct bio *bio, sector_t skip,
				  sector_t len, sector_t host, blk_opf_t opf)
{
	struct bio *clone;
	int r;

	clone = bio_alloc_clone(lc->host_bdev, bio, GFP_NOIO, lc->bs);
	if (!clone)
		return -ENOMEM;
	bio_trim(clone, skip, len);
	clone->bi_opf = REQ_OP_WRITE | REQ_SYNC | opf;
	clone->bi_iter.bi_sector = host;
	r = submit_bio_wait(clone);
	bio_put(clone);
	return r;
}

/*
 * Write device sectors [@pos, @pos + @len) of @bio (@skip sectors into it)
 * over unwritten extent @e, in the order the file's comment gives.
 */
static int loop_sparse_write_unwritten(struct loop_c *lc, struct bio *bio,
				       const struct loop_extent *e, sector_t skip,
				       sector_t pos, sector_t len)
{
	sector_t spb = lc->block_size >> SECTOR_SHIFT;
	sector_t bstart = round_down(pos, spb), bend = round_up(pos + len, spb);
	sector_t host = loop_ext_host(e) + (bstart - e->dev_sector);
	struct iomap iomap = {
		.offset = lc->offset + ((loff_t)bstart << SECTOR_SHIFT),
		.length = (u64)(bend - bstart) << SECTOR_SHIFT,
	};
	sector_t dev_end;
	int r = 0;

	/* The rest of a block written in part must read as the zeros it held. */
	if (pos > bstart)
		r = loop_sparse_zero(lc, host, pos - bstart);
	if (!r && bend > pos + len)
		r = loop_sparse_zero(lc, host + (pos + len - bstart), bend - (pos + len));
	if (!r)
		r = loop_sparse_write_data(lc, bio, skip, len, host + (pos - bstart), 0);
	if (!r)
		r = blkdev_issue_flush(lc->host_bdev);
	if (!r)
		r = dmloop_commit_blocks(file_inode(lc->file), &iomap, 1);
	if (r)
		return r;
	/* The last block may reach past the device's end. */
	dev_end = min_t(sector_t, bend, lc->ti->len);
	return loop_table_set(lc, bstart, dev_end - bstart, host);
}

/* One bio into holes or unwritten ranges (the table may have moved on). */
static int loop_sparse_write(struct loop_c *lc, struct bio *bio)
{
	sector_t start = dm_target_offset(lc->ti, bio->bi_iter.bi_sector);
	sector_t end = start + bio_sectors(bio), pos = start;
	blk_opf_t fua = bio->bi_opf & REQ_FUA;
	int r;

	while (pos < end) {
		const struct loop_table *t = rcu_dereference_protected(lc->table,
					lockdep_is_held(&lc->alloc_lock));
		const struct loop_extent *e = loop_find_extent(t, pos);
		sector_t len = min(end, e->dev_sector + e->len) - pos;

		if (e->host_sector & LOOP_EXT_HOLE) {
			r = loop_sparse_alloc(lc, e, pos, len);
			if (r)
				return r;
			continue;
		}
		if (loop_ext_written(e))
			r = loop_sparse_write_data(lc, bio, pos - start, len,
						   e->host_sector + (pos - e->dev_sector), fua);
		else
			r = loop_sparse_write_unwritten(lc, bio, e, pos - start, pos, len);
		if (r)
			return r;
		pos += len;
	}
	return 0;
}

/*
 * A batch of writes that share one flush and one commit_blocks(): those
 * whose unwritten ranges are whole filesystem blocks.  Each piece is the
 * part of a bio over one extent.
 */
struct loop_sparse_batch {
	atomic_t pending;
	struct completion done;
};

struct loop_sparse_piece {
	struct loop_sparse_batch *b;
	unsigned int bio;		/* index into the batch's bios */
	bool unwritten;
	blk_status_t status;
	sector_t pos, len, host;
};

static void loop_sparse_piece_end(struct bio *clone)
{
	struct loop_sparse_piece *p = clone->bi_private;
	struct loop_sparse_batch *b = p->b;

	p->status = clone->bi_status;
	bio_put(clone);
	if (atomic_dec_and_test(&b->pending))
		complete(&b->done);
}

/*
 * Allocate every hole @bio writes into; then, in @pieces if not NULL, its
 * pieces over written and unwritten extents.  The number of pieces, or an
 * errno; -EAGAIN: an unwritten piece covers a filesystem block in part
 * (that bio goes alone, loop_sparse_write()).
 */
static int loop_sparse_plan(struct loop_c *lc, struct bio *bio, unsigned int idx,
			    struct loop_sparse_piece *pieces)
{
	sector_t spb = lc->block_size >> SECTOR_SHIFT;
	sector_t start = dm_target_offset(lc->ti, bio->bi_iter.bi_sector);
	sector_t end = start + bio_sectors(bio), pos = start;
	unsigned int n = 0;
	int r;

	while (pos < end) {
		const struct loop_table *t = rcu_dereference_protected(lc->table,
					lockdep_is_held(&lc->alloc_lock));
		const struct loop_extent *e = loop_find_extent(t, pos);
		sector_t len = min(end, e->dev_sector + e->len) - pos;

		if (e->host_sector & LOOP_EXT_HOLE) {
			r = loop_sparse_alloc(lc, e, pos, len);
			if (r)
				return r;
			continue;
		}
		if (!loop_ext_written(e) && ((pos | (pos + len)) & (spb - 1)))
			return -EAGAIN;
		if (pieces)
			pieces[n] = (struct loop_sparse_piece){
				.bio = idx, .unwritten = !loop_ext_written(e), .pos = pos,
				.len = len, .host = loop_ext_host(e) + (pos - e->dev_sector) };
		n++;
		pos += len;
	}
	return n;
}

/*
 * Record the converted pieces (unwritten, their bio's data all landed) in
 * the table as written: a run contiguous on the device and on the host is
 * one range, one rebuild of the segments it covers and one copy of the
 * index, not one for each piece.  Nothing in a batch remaps a sector that
 * is not a hole (loop_sparse_alloc() fills holes only), so the order in
 * which ranges are set does not change the result.
 */
static int loop_sparse_record(struct loop_c *lc, const struct loop_sparse_piece *pieces,
			      unsigned int np, const int *status)
{
	sector_t pos = 0, len = 0, host = 0;
	unsigned int i;
	int r;

	for (i = 0; i < np; i++) {
		const struct loop_sparse_piece *p = &pieces[i];

		if (!p->unwritten || status[p->bio])
			continue;
		if (len && p->pos == pos + len && p->host == host + len) {
			len += p->len;
			continue;
		}
		if (len) {
			r = loop_table_set(lc, pos, len, host);
			if (r)
				return r;
		}
		pos = p->pos;
		len = p->len;
		host = p->host;
	}
	return len ? loop_table_set(lc, pos, len, host) : 0;
}

/*
 * Write @nr bios (@status[i] already set for those that failed or go
 * alone) in one batch: the data of all at once, then one flush and one
 * commit_blocks() for their unwritten ranges, then the table.
 */
static void loop_sparse_batch(struct loop_c *lc, struct bio **bios, int *status,
			      unsigned int nr)
{
	struct loop_sparse_batch b;
	struct loop_sparse_piece *pieces;
	struct iomap *maps;
	unsigned int i, np = 0, nm = 0;
	int r;

	for (i = 0; i < nr; i++) {
		if (status[i])
			continue;
		r = loop_sparse_plan(lc, bios[i], i, NULL);
		if (r < 0)
			status[i] = r;
		else
			np += r;
	}
	if (!np)
		return;
	pieces = kvmalloc_array(np, sizeof(*pieces), GFP_NOIO);
	maps = kvmalloc_array(np, sizeof(*maps), GFP_NOIO);
	if (!pieces || !maps) {
		/* Each on its own, then. */
		for (i = 0; i < nr; i++)
			if (!status[i])
				status[i] = -EAGAIN;
		goto out;
	}
	/* Allocating for one bio only merges the others' extents: no more pieces. */
	np = 0;
	for (i = 0; i < nr; i++) {
		if (status[i])
			continue;
		r = loop_sparse_plan(lc, bios[i], i, pieces + np);
		if (r < 0)
			status[i] = r;
		else
			np += r;
	}

	atomic_set(&b.pending, 1);
	init_completion(&b.done);
	for (i = 0; i < np; i++) {
		struct loop_sparse_piece *p = &pieces[i];
		struct bio *bio = bios[p->bio];
		struct bio *clone;

		p->b = &b;
		p->status = BLK_STS_OK;
		clone = bio_alloc_clone(lc->host_bdev, bio, GFP_NOIO, lc->bs);
		if (!clone) {
			p->status = BLK_STS_RESOURCE;
			continue;
		}
		bio_trim(clone, p->pos - dm_target_offset(lc->ti, bio->bi_iter.bi_sector),
			 p->len);
		clone->bi_opf = REQ_OP_WRITE | REQ_SYNC |
				(p->unwritten ? 0 : bio->bi_opf & REQ_FUA);
		clone->bi_iter.bi_sector = p->host;
		clone->bi_private = p;
		clone->bi_end_io = loop_sparse_piece_end;
		atomic_inc(&b.pending);
		submit_bio(clone);
	}
	if (!atomic_dec_and_test(&b.pending))
		wait_for_completion_io(&b.done);

	for (i = 0; i < np; i++)
		if (pieces[i].status)
			status[pieces[i].bio] = blk_status_to_errno(pieces[i].status);
	/*
	 * The unwritten pieces of the bios whose data all landed; one that
	 * starts exactly where the last one taken ends joins it (bios of a
	 * file filled in order: fewer conversion transactions, each over
	 * more blocks).  A map is only ever the union of pieces taken, end
	 * to end: converting a hole would make blocks written that hold
	 * the disk's old contents.
	 */
	for (i = 0; i < np; i++) {
		struct loop_sparse_piece *p = &pieces[i];
		loff_t off = lc->offset + ((loff_t)p->pos << SECTOR_SHIFT);
		u64 len = (u64)p->len << SECTOR_SHIFT;
		loff_t end = nm ? maps[nm - 1].offset + (loff_t)maps[nm - 1].length : 0;

		if (!p->unwritten || status[p->bio])
			continue;
		if (nm && end == off)
			maps[nm - 1].length += len;
		else
			maps[nm++] = (struct iomap){ .offset = off, .length = len };
	}
	if (!nm)
		goto out;
	r = blkdev_issue_flush(lc->host_bdev);
	if (!r)
		r = dmloop_commit_blocks(file_inode(lc->file), maps, nm);
	if (!r)
		r = loop_sparse_record(lc, pieces, np, status);
	/* Not converted, or not in the table: reads may see zeros. */
	for (i = 0; r && i < np; i++)
		if (pieces[i].unwritten && !status[pieces[i].bio])
			status[pieces[i].bio] = r;
out:
	kvfree(maps);
	kvfree(pieces);
}

/* Bios the worker takes at once: one flush and one commit for them all. */
#define LOOP_SPARSE_BATCH	32

/*
 * The device's worker for writes into holes and unwritten ranges: up to
 * LOOP_SPARSE_BATCH of them at a time, in one batch; a bio that writes
 * part of an unwritten block is done on its own, after the batch
 * (loop_sparse_write()).  NOIO: the filesystem's allocations must not
 * recurse into writeback that may be waiting for this very device.
 */
void loop_sparse_work(struct work_struct *work)
{
	struct loop_c *lc = container_of(work, struct loop_c, sparse_work);
	unsigned int noio = memalloc_noio_save();
	struct bio *bios[LOOP_SPARSE_BATCH];
	int status[LOOP_SPARSE_BATCH];
	unsigned int nr, i;

	for (;;) {
		spin_lock_irq(&lc->lock);
		for (nr = 0; nr < LOOP_SPARSE_BATCH; nr++) {
			bios[nr] = bio_list_pop(&lc->pending);
			if (!bios[nr])
				break;
			status[nr] = 0;
		}
		spin_unlock_irq(&lc->lock);
		if (!nr)
			break;
		mutex_lock(&lc->alloc_lock);
		loop_sparse_batch(lc, bios, status, nr);
		for (i = 0; i < nr; i++)
			if (status[i] == -EAGAIN)
				status[i] = loop_sparse_write(lc, bios[i]);
		mutex_unlock(&lc->alloc_lock);
		for (i = 0; i < nr; i++) {
			if (status[i]) {
				DMERR_LIMIT("%s: write into a hole at sector %llu failed: %d",
					    lc->path,
					    (unsigned long long)bios[i]->bi_iter.bi_sector,
					    status[i]);
				loop_stat_inc(lc, errors);
				bios[i]->bi_status = errno_to_blk_status(status[i]);
			}
			bio_endio(bios[i]);
		}
		cond_resched();
	}
	memalloc_noio_restore(noio);
}

/*
 * The file's layout from map_blocks(), XFS's own answer, which needs no
 * user memory: into *@tp.  0, or an error (ti->error set).
 */
int loop_sparse_walk(struct loop_c *lc, struct loop_table **tp)
{
	struct inode *inode = file_inode(lc->file);
	u64 host_bytes = bdev_nr_bytes(lc->host_bdev);
	loff_t pos = lc->offset;
	loff_t end = round_up(lc->offset + ((loff_t)lc->ti->len << SECTOR_SHIFT),
			      (loff_t)i_blocksize(inode));
	struct loop_table *t;
	unsigned int nr = 0, size = 64;
	struct loop_extent *v, *e;
	int r = 0;

	v = kvmalloc_array(size, sizeof(*v), GFP_KERNEL);
	if (!v)
		goto nomem;
	while (pos < end) {
		struct iomap iomap = {};
		sector_t host;
		loff_t n;

		r = dmloop_map_blocks(inode, pos, end - pos, &iomap, false);
		if (r)
			break;
		n = min_t(loff_t, iomap.offset + (loff_t)iomap.length, end) - pos;
		if (iomap.offset > pos || n <= 0 || ((iomap.offset | iomap.length) & 511)) {
			r = -EIO;
			break;
		}
		if (iomap.type == IOMAP_HOLE) {
			host = LOOP_EXT_HOLE;
		} else if ((iomap.type == IOMAP_MAPPED || iomap.type == IOMAP_UNWRITTEN) &&
			   iomap.addr != IOMAP_NULL_ADDR && iomap.bdev == lc->host_bdev &&
			   !(iomap.addr & 511) &&
			   iomap.addr + (pos + n - iomap.offset) <= host_bytes) {
			host = (iomap.addr + (pos - iomap.offset)) >> SECTOR_SHIFT;
			if (iomap.type == IOMAP_UNWRITTEN)
				host |= LOOP_EXT_UNWRITTEN;
		} else {
			r = -EIO;
			break;
		}
		e = nr ? &v[nr - 1] : NULL;
		if (e && (e->host_sector & LOOP_EXT_STATE) == (host & LOOP_EXT_STATE) &&
		    (e->host_sector & LOOP_EXT_HOLE || e->host_sector + e->len == host)) {
			e->len += n >> SECTOR_SHIFT;
		} else {
			if (nr == size) {
				struct loop_extent *w;

				if (size > INT_MAX / sizeof(*w) / 2) {
					r = -E2BIG;
					break;
				}
				w = kvmalloc_array(size * 2, sizeof(*w), GFP_KERNEL);
				if (!w) {
					kvfree(v);
					goto nomem;
				}
				memcpy(w, v, nr * sizeof(*w));
				kvfree(v);
				v = w;
				size *= 2;
			}
			v[nr++] = (struct loop_extent){
				(pos - lc->offset) >> SECTOR_SHIFT, host, n >> SECTOR_SHIFT };
		}
		pos += n;
		if (fatal_signal_pending(current)) {
			r = -EINTR;
			break;
		}
		cond_resched();
	}
	if (r) {
		DMERR("%s: map_blocks failed at byte %lld: %d", lc->path, pos, r);
		lc->ti->error = "Cannot map the file's blocks";
		kvfree(v);
		return r;
	}
	v[nr - 1].len = lc->ti->len - v[nr - 1].dev_sector;
	t = loop_table_build(v, nr);
	kvfree(v);
	if (!t)
		goto nomem;
	*tp = t;
	return 0;
nomem:
	lc->ti->error = "Cannot allocate extent table";
	return -ENOMEM;
}

/*
 * What the table says just before the device starts (or starts again)
 * serving I/O.  A table loaded beside a live one (a reload) was walked
 * while the live one could still allocate and write; once that one is
 * suspended, no one else changes the
 * file, and this is the layout from then on.  0, or an error (ti->error
 * set).
 */
static int loop_sparse_do_refresh(struct loop_c *lc)
{
	struct loop_table *t, *old;
	int r;

	r = loop_sparse_walk(lc, &t);
	if (r)
		return r;
	mutex_lock(&lc->alloc_lock);
	old = rcu_dereference_protected(lc->table, lockdep_is_held(&lc->alloc_lock));
	loop_table_account(old, t);
	rcu_assign_pointer(lc->table, t);
	mutex_unlock(&lc->alloc_lock);
	loop_table_retire(old, true);
	return 0;
}

/* The device is suspended: its own swap or writeback must not wait on us. */
int loop_sparse_refresh(struct loop_c *lc)
{
	unsigned int noio = memalloc_noio_save();
	int r = loop_sparse_do_refresh(lc);

	memalloc_noio_restore(noio);
	return r;
}

/* The destructor runs with no bio left in dm; the worker may still run. */
void loop_sparse_teardown(struct loop_c *lc)
{
	flush_work(&lc->sparse_work);
	if (lc->bs) {
		bioset_exit(lc->bs);
		kfree(lc->bs);
		lc->bs = NULL;
	}
}

