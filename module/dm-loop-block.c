// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop block mode: the file's extents, read from the filesystem's own
 * extent map (FIEMAP) while the file is pinned, remapped straight to the
 * host block device.
 *
 * Nothing on the I/O path calls into the VFS, allocates or sleeps: map() is
 * a binary search over a flat array.  dm-loop.rst says why the walk is
 * FIEMAP, and how bmap() still checks it.
 */
#include <linux/blkdev.h>
#include <linux/fiemap.h>
#include <linux/iomap.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/moduleparam.h>
#include <linux/pagemap.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "dm-loop.h"
#include "compat.h"

/* bmap() walk: how many blocks between two checks for rescheduling and signals. */
#define LOOP_WALK_BATCH 1024
/* FIEMAP walk: extents per ->fiemap() call (56 KiB of the caller's memory). */
#define LOOP_FIEMAP_BATCH 1024

static bool loop_bmap_walk;
module_param_named(bmap_walk, loop_bmap_walk, bool, 0644);
MODULE_PARM_DESC(bmap_walk,
		 "Build new extent tables with one bmap() per block, not FIEMAP");

struct loop_extent_buf {
	struct loop_extent *v;
	unsigned int nr;
	unsigned int size;
};

/*
 * What a walk returns besides 0 and an error: the file cannot be block
 * mapped (lc->reason set), or FIEMAP cannot be used here (the bmap() walk
 * does the job instead).  Positive, so that no errno a filesystem returns
 * (-ENODATA for a medium error, say) can be taken for either.
 */
#define LOOP_RET_UNMAPPABLE	1
#define LOOP_RET_NO_FIEMAP	2

/* The walk's buffer: no one but the filesystem and us may write it. */
#define LOOP_FIEMAP_VM_FLAGS	(VM_IO | VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP)

static int loop_extent_append(struct loop_extent_buf *buf, sector_t dev_sector,
			      sector_t host_sector, sector_t len)
{
	struct loop_extent *e;

	if (buf->nr) {
		e = &buf->v[buf->nr - 1];
		/* A hole's host_sector is LOOP_EXT_HOLE, whatever its length. */
		if ((e->host_sector & LOOP_EXT_HOLE ? e->host_sector == host_sector :
		     e->host_sector + e->len == host_sector) &&
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

/* File mode, for @reason at file block @block. */
static int loop_unmappable(struct loop_c *lc, enum loop_reason reason, u64 block)
{
	lc->reason = reason;
	lc->unmapped_block = block;
	return LOOP_RET_UNMAPPABLE;
}

/*
 * One pass of bmap() over the mapped range, coalescing contiguous blocks:
 * the walk where there is no user address space for FIEMAP (a table from
 * dm-mod.create=), or with bmap_walk set.  bmap() says 0 for a hole, and
 * on the filesystems allowed here for unwritten and shared blocks too.
 */
static int loop_walk_bmap(struct loop_c *lc, struct loop_extent_buf *buf)
{
	struct inode *inode = file_inode(lc->file);
	unsigned int shift = inode->i_blkbits - SECTOR_SHIFT;
	sector_t spb = (sector_t)1 << shift;
	sector_t host_sectors = bdev_nr_sectors(lc->host_bdev);
	sector_t first = lc->offset >> inode->i_blkbits;
	sector_t nr_blocks = (lc->ti->len + spb - 1) >> shift;
	sector_t i;
	int r;

	lc->walk = LOOP_WALK_BMAP;
	for (i = 0; i < nr_blocks; i++) {
		sector_t block = first + i;

		r = bmap(inode, &block);
		if (r) {
			lc->ti->error = "Cannot read the file's layout";
			return r;
		}
		if (!block)
			return loop_unmappable(lc, LOOP_REASON_UNMAPPED, first + i);
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
	return 0;
}

/*
 * The reason an extent's flags rule block mode out, or NONE.  Only LAST
 * and MERGED say nothing about the data; of the rest the most telling is
 * named first.
 */
static enum loop_reason loop_fiemap_flags_reason(u32 flags)
{
	static const struct {
		u32 flag;
		enum loop_reason reason;
	} order[] = {
		{ FIEMAP_EXTENT_DATA_INLINE,	LOOP_REASON_INLINE },
		{ FIEMAP_EXTENT_DATA_TAIL,	LOOP_REASON_TAIL },
		{ FIEMAP_EXTENT_DELALLOC,	LOOP_REASON_DELALLOC },
		{ FIEMAP_EXTENT_DATA_ENCRYPTED,	LOOP_REASON_ENCRYPTED_EXTENT },
		{ FIEMAP_EXTENT_ENCODED,	LOOP_REASON_ENCODED },
		{ FIEMAP_EXTENT_UNWRITTEN,	LOOP_REASON_UNWRITTEN },
		{ FIEMAP_EXTENT_SHARED,		LOOP_REASON_SHARED },
		{ FIEMAP_EXTENT_NOT_ALIGNED,	LOOP_REASON_NOT_ALIGNED },
	};
	unsigned int i;

	flags &= ~(FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED);
	if (!flags)
		return LOOP_REASON_NONE;
	for (i = 0; i < ARRAY_SIZE(order); i++)
		if (flags & order[i].flag)
			return order[i].reason;
	return LOOP_REASON_UNKNOWN;
}

struct loop_fiemap_walk {
	struct loop_c *lc;
	struct inode *inode;
	u64 pos;		/* the next file byte to map */
	u64 end;		/* past the last one, on a block boundary */
	u64 host_bytes;
	bool witness_all;	/* bmap() at both ends of every extent */
	bool witnessed;		/* ... or at the first extent only */
	bool batch_start;	/* the record is the first of its batch */
};

/* bmap() of one file block, 0 for none (and for an error). */
static sector_t loop_bmap_block(struct inode *inode, sector_t block)
{
	return bmap(inode, &block) ? 0 : block;
}

/* A sparse table's hole, from w->pos up to file byte @to. */
static int loop_hole_append(struct loop_fiemap_walk *w, struct loop_extent_buf *buf, u64 to)
{
	struct loop_c *lc = w->lc;
	int r;

	r = loop_extent_append(buf, (w->pos - lc->offset) >> SECTOR_SHIFT, LOOP_EXT_HOLE,
			       (to - w->pos) >> SECTOR_SHIFT);
	if (r) {
		lc->ti->error = "Cannot allocate extent table";
		return r;
	}
	w->pos = to;
	return 0;
}

/* map_blocks() says file block @block is unwritten, at disk block @pblk. */
static bool loop_unwritten_witness(struct loop_fiemap_walk *w, sector_t block, sector_t pblk)
{
	unsigned int bits = w->inode->i_blkbits;
	loff_t pos = (loff_t)block << bits;
	struct iomap iomap = {};

	if (dmloop_map_blocks(w->inode, pos, 1U << bits, &iomap, false))
		return false;
	return iomap.type == IOMAP_UNWRITTEN && iomap.bdev == w->lc->host_bdev &&
	       iomap.offset <= pos && pos < iomap.offset + (loff_t)iomap.length &&
	       iomap.addr != IOMAP_NULL_ADDR &&
	       iomap.addr + (pos - iomap.offset) == (u64)pblk << bits;
}

/*
 * Add what one FIEMAP record maps at w->pos to the table.  Returns 0,
 * LOOP_RET_UNMAPPABLE (lc->reason and the file block set), or an error
 * (ti->error set).
 */
static int loop_fiemap_add(struct loop_fiemap_walk *w, struct loop_extent_buf *buf,
			   const struct fiemap_extent *fe)
{
	struct loop_c *lc = w->lc;
	unsigned int bits = w->inode->i_blkbits;
	u64 mask = ((u64)1 << bits) - 1;
	u64 logical = fe->fe_logical, phys = fe->fe_physical, len = fe->fe_length;
	enum loop_reason reason;
	sector_t first, last, pblk;
	bool unwritten;
	int r;

	if (!len || logical + len < logical || phys + len < phys) {
		DMERR("%s: FIEMAP gave a malformed extent at byte %llu",
		      lc->path, (unsigned long long)logical);
		lc->ti->error = "Filesystem reported a malformed extent";
		return -EIO;
	}
	/*
	 * Each record starts where the last one ended, or before w->pos for
	 * the first of a batch (an extent the batch boundary cut): anything
	 * else is a hole or a malformed map, never skipped.
	 */
	if (logical + len <= w->pos || (logical < w->pos && !w->batch_start)) {
		DMERR("%s: FIEMAP went back to byte %llu", lc->path,
		      (unsigned long long)logical);
		lc->ti->error = "Filesystem reported a malformed extent";
		return -EIO;
	}
	if (logical > w->pos) {
		if (!lc->sparse)
			return loop_unmappable(lc, LOOP_REASON_HOLE, w->pos >> bits);
		r = loop_hole_append(w, buf, min(logical, w->end));
		if (r || w->pos >= w->end)
			return r;
	}
	reason = loop_fiemap_flags_reason(fe->fe_flags);
	if (reason == LOOP_REASON_NONE && ((logical | phys | len) & mask))
		reason = LOOP_REASON_NOT_ALIGNED;
	/* Unwritten and nothing else, aligned: a sparse table holds it. */
	unwritten = lc->sparse && !((logical | phys | len) & mask) &&
		    (fe->fe_flags & ~(FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED)) ==
		    FIEMAP_EXTENT_UNWRITTEN;
	if (reason != LOOP_REASON_NONE && !unwritten)
		return loop_unmappable(lc, reason, w->pos >> bits);

	phys += w->pos - logical;
	len = min(len - (w->pos - logical), w->end - w->pos);

	/*
	 * The second witness: bmap() must say the same at both ends (and
	 * block 0, its "none", is never file data).  It says 0 for what
	 * FIEMAP may not flag: any block of an XFS inode that has been
	 * reflinked, or of a realtime one, whose addresses are on the
	 * realtime device (so this comes before the bounds check).
	 */
	first = w->pos >> bits;
	last = first + (len >> bits) - 1;
	pblk = phys >> bits;
	if (unwritten) {
		/* bmap() has nothing for unwritten blocks: map_blocks() is the witness. */
		if (w->witness_all &&
		    (!loop_unwritten_witness(w, first, pblk) ||
		     !loop_unwritten_witness(w, last, pblk + (last - first))))
			return loop_unmappable(lc, LOOP_REASON_BMAP_MISMATCH, first);
	} else if (w->witness_all || !w->witnessed) {
		if (!pblk || loop_bmap_block(w->inode, first) != pblk)
			return loop_unmappable(lc, LOOP_REASON_BMAP_MISMATCH, first);
		if (last != first &&
		    loop_bmap_block(w->inode, last) != pblk + (last - first))
			return loop_unmappable(lc, LOOP_REASON_BMAP_MISMATCH, last);
		w->witnessed = true;
	}
	if (phys + len > w->host_bytes) {
		DMERR("%s: FIEMAP gave block %llu beyond the host device",
		      lc->path, (unsigned long long)((phys + len - 1) >> bits));
		lc->ti->error = "Filesystem mapped a block beyond its device";
		return -EIO;
	}

	r = loop_extent_append(buf, (w->pos - lc->offset) >> SECTOR_SHIFT,
			       (phys >> SECTOR_SHIFT) | (unwritten ? LOOP_EXT_UNWRITTEN : 0),
			       len >> SECTOR_SHIFT);
	if (r) {
		lc->ti->error = "Cannot allocate extent table";
		return r;
	}
	w->pos += len;
	return 0;
}

/*
 * Make the walk's buffer, just mapped at @uaddr, VM_IO and the rest; only
 * if it is a VMA of its own.  0, or LOOP_RET_NO_FIEMAP.
 */
static int loop_fiemap_seal(unsigned long uaddr, size_t size)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	int r = LOOP_RET_NO_FIEMAP;

	if (mmap_write_lock_killable(mm))
		return r;
	vma = vma_lookup(mm, uaddr);
	if (vma && vma->vm_start == uaddr && vma->vm_end == uaddr + PAGE_ALIGN(size) &&
	    vma_is_anonymous(vma)) {
		dmloop_vm_flags_set(vma, LOOP_FIEMAP_VM_FLAGS);
		r = 0;
	}
	mmap_write_unlock(mm);
	return r;
}

/*
 * Read the mapped range's extents from the filesystem's own map, as
 * FS_IOC_FIEMAP does: ->fiemap() copies its records to user memory, so
 * they go through a buffer mapped into the caller's address space (the
 * constructor runs in its ioctl) for the walk.  FIEMAP_FLAG_SYNC writes
 * delayed allocations out first.
 *
 * The buffer is the caller's memory: anyone else who could write it
 * could rewrite a record between the filesystem's write and our read, and
 * bmap() checks only each extent's ends.  So the walk a table is built
 * from (@trusted) is only for a caller whose address space no one else
 * uses (mm_users 1, before and after: dmsetup, lvm: no other thread),
 * and the buffer's VMA is VM_IO, which get_user_pages() refuses: no
 * process_vm_writev(), /proc/<pid>/mem or ptrace write can reach it, and
 * it is not copied by fork.  Any other caller gets the bmap() walk for
 * it, as does one whose buffer cannot be mapped or read.  The walk before
 * the pin only decides whether to pin: a forged record there can give
 * file mode, or a pin and the walk that counts.
 *
 * Returns 0, LOOP_RET_UNMAPPABLE (lc->reason set), LOOP_RET_NO_FIEMAP,
 * or an error (ti->error set).
 */
static int loop_walk_fiemap(struct loop_c *lc, struct loop_extent_buf *buf,
			    bool trusted)
{
	const size_t size = LOOP_FIEMAP_BATCH * sizeof(struct fiemap_extent);
	struct inode *inode = file_inode(lc->file);
	struct loop_fiemap_walk w = {
		.lc = lc,
		.inode = inode,
		.pos = lc->offset,
		.end = round_up(lc->offset + ((u64)lc->ti->len << SECTOR_SHIFT),
				(u64)i_blocksize(inode)),
		.host_bytes = bdev_nr_bytes(lc->host_bdev),
		.witness_all = trusted,
	};
	struct fiemap_extent *fe;
	unsigned long uaddr;
	unsigned int i;
	int r = 0;

	if (trusted && atomic_read(&current->mm->mm_users) != 1)
		return LOOP_RET_NO_FIEMAP;
	fe = kvmalloc(size, GFP_KERNEL);
	if (!fe) {
		lc->ti->error = "Cannot allocate a buffer for the file's extent map";
		return -ENOMEM;
	}
	/*
	 * Its limits (RLIMIT_AS, overcommit) are the caller's: bmap() then.
	 * MAP_NORESERVE keeps it from merging with the caller's own anonymous
	 * memory, whose flags must not change (bmap() too if it did merge).
	 */
	uaddr = vm_mmap(NULL, 0, size, PROT_READ | PROT_WRITE,
			MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, 0);
	if (IS_ERR_VALUE(uaddr)) {
		r = (long)uaddr == -EINTR ? -EINTR : LOOP_RET_NO_FIEMAP;
		if (r == -EINTR)
			lc->ti->error = "Interrupted while reading the file's layout";
		goto out_free;
	}
	r = loop_fiemap_seal(uaddr, size);
	if (r)
		goto out;
	lc->walk = LOOP_WALK_FIEMAP;

	while (w.pos < w.end) {
		struct fiemap_extent_info fi = {
			.fi_flags = FIEMAP_FLAG_SYNC,
			.fi_extents_max = LOOP_FIEMAP_BATCH,
			.fi_extents_start = (struct fiemap_extent __user *)uaddr,
		};
		u64 from = w.pos;

		r = inode->i_op->fiemap(inode, &fi, w.pos, w.end - w.pos);
		/* The buffer could not be written: bmap() then, unless killed. */
		if ((r == -EFAULT || r == -EOPNOTSUPP) && !fatal_signal_pending(current)) {
			r = LOOP_RET_NO_FIEMAP;
			break;
		}
		if (r) {
			DMERR("%s: FIEMAP failed at byte %llu: %d", lc->path,
			      (unsigned long long)w.pos, r);
			lc->ti->error = "Cannot read the file's extent map";
			break;
		}
		if (fi.fi_extents_mapped > LOOP_FIEMAP_BATCH) {
			lc->ti->error = "Filesystem reported a malformed extent";
			r = -EIO;
			break;
		}
		if (copy_from_user(fe, fi.fi_extents_start,
				   fi.fi_extents_mapped * sizeof(*fe))) {
			r = LOOP_RET_NO_FIEMAP;
			break;
		}
		for (i = 0; i < fi.fi_extents_mapped && w.pos < w.end; i++) {
			w.batch_start = !i;
			r = loop_fiemap_add(&w, buf, &fe[i]);
			if (r)
				goto out;
		}
		/* Fewer than asked for: that was all, and the rest is a hole. */
		if (fi.fi_extents_mapped < LOOP_FIEMAP_BATCH) {
			if (w.pos < w.end && lc->sparse)
				r = loop_hole_append(&w, buf, w.end);
			else if (w.pos < w.end)
				r = loop_unmappable(lc, LOOP_REASON_HOLE,
						    w.pos >> inode->i_blkbits);
			break;
		}
		if (w.pos == from) {
			lc->ti->error = "Filesystem reported a malformed extent";
			r = -EIO;
			break;
		}
		cond_resched();
		if (fatal_signal_pending(current)) {
			lc->ti->error = "Interrupted while reading the file's layout";
			r = -EINTR;
			break;
		}
	}
out:
	vm_munmap(uaddr, size);
	/* Someone came to share the address space meanwhile: not trusted. */
	if (!r && trusted && atomic_read(&current->mm->mm_users) != 1)
		r = LOOP_RET_NO_FIEMAP;
out_free:
	kvfree(fe);
	if (r == LOOP_RET_NO_FIEMAP)
		lc->walk = LOOP_WALK_NONE;
	return r;
}

/* FIEMAP needs a user address space to copy to: the caller's, if any. */
static bool loop_can_fiemap(struct inode *inode)
{
	return inode->i_op->fiemap && current->mm &&
	       !(current->flags & PF_KTHREAD) && !READ_ONCE(loop_bmap_walk);
}

static bool loop_buf_sparse(const struct loop_extent_buf *b)
{
	unsigned int i;

	for (i = 0; i < b->nr; i++)
		if (b->v[i].host_sector & LOOP_EXT_STATE)
			return true;
	return false;
}

static bool loop_extents_equal(const struct loop_extent_buf *a,
			       const struct loop_extent_buf *b)
{
	return a->nr == b->nr && !memcmp(a->v, b->v, a->nr * sizeof(*a->v));
}

static bool loop_sb_frozen(struct super_block *sb)
{
	return READ_ONCE(sb->s_writers.frozen) != SB_UNFROZEN;
}

/*
 * Decide the mode, then pin the file and read its layout.  The ordering
 * is swapon's: no write may start once S_SWAPFILE is set, so the layout
 * read under the pin stays true until loop_block_teardown().  Before the
 * pin, whatever can rule block mode out without one is checked, the
 * extent map walk included: a file that gets file mode is never pinned,
 * so its other users never see ETXTBSY while a table loads.
 *
 * Returns 0 in block mode, < 0 on error (ti->error set), or 1 when the file
 * cannot be block mapped: lc->reason says why, and the file is not pinned.
 */
int loop_block_setup(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct address_space *mapping = lc->file->f_mapping;
	struct loop_extent_buf seen = {}, buf = {};
	bool reloading, frozen, fiemap, walked = false;
	struct loop_table *t;
	int r;

	lc->host_bdev = inode->i_sb->s_bdev;
	lc->host_dm_dev.bdev = lc->host_bdev;
	lc->host_dm_dev.mode = lc->read_only ? FMODE_READ : FMODE_READ | FMODE_WRITE;
	snprintf(lc->host_dm_dev.name, sizeof(lc->host_dm_dev.name), "%u:%u",
		 MAJOR(lc->host_bdev->bd_dev), MINOR(lc->host_bdev->bd_dev));
	fiemap = loop_can_fiemap(inode);
	/*
	 * Holes and unwritten ranges only where map_blocks() serves the
	 * file, and from FIEMAP (bmap() says 0 for both, and for shared).
	 */
	lc->sparse = fiemap && loop_sparse_possible(lc);

	/*
	 * 1: this device holds the pin (a reload over its live table's
	 * file): nothing can have changed the layout, and the checks that
	 * fall back to file mode would fail instead (a pinned file refuses a
	 * file-mode table), so they are for a new pin only.
	 */
	r = loop_inode_probe(lc);
	if (r == -EAGAIN)
		goto in_use;
	if (r < 0)
		goto out;

	if (r != 1) {
		r = LOOP_RET_UNMAPPABLE;
		if (loop_sb_frozen(inode->i_sb)) {
			lc->reason = LOOP_REASON_FROZEN;
			goto out;
		}
		if (mapping_writably_mapped(mapping)) {
			lc->reason = LOOP_REASON_MMAPPED;
			goto out;
		}
		/* The bmap() walk costs a call per block: once, pinned. */
		if (fiemap) {
			r = loop_walk_fiemap(lc, &seen, false);
			walked = !r;
			if (r == LOOP_RET_NO_FIEMAP)
				fiemap = false;
			else if (r)
				goto out;
			r = 0;
		}
		/*
		 * A sparse layout needs map_blocks(), which refuses a reflinked
		 * inode: then the walk under the pin names the first hole.
		 */
		if (walked && loop_buf_sparse(&seen) && loop_sparse_probe(lc)) {
			lc->sparse = false;
			walked = false;
		}
	}
	if (!fiemap)
		lc->sparse = false;

	r = loop_inode_pin(lc);
	if (r == -EAGAIN)
		goto in_use;
	if (r < 0)
		goto out;
	/*
	 * From the pin itself: the probe's answer may be stale (a resume or
	 * clear of this device destroyed the table holding the pin since).
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
	r = LOOP_RET_UNMAPPABLE;
	frozen = loop_sb_frozen(inode->i_sb);
	inode_lock(inode);
	filemap_invalidate_lock(mapping);
	filemap_invalidate_unlock(mapping);
	inode_unlock(inode);
	/* Frozen before the barrier or after: a thaw may have let one in. */
	frozen |= loop_sb_frozen(inode->i_sb);
	/*
	 * The constructor checked the size before the pin: a truncate since
	 * would leave blocks past EOF, which commit_blocks() never converts.
	 */
	if (lc->offset + ((loff_t)lc->ti->len << SECTOR_SHIFT) > i_size_read(inode)) {
		lc->ti->error = "Device length reaches past end of file";
		r = -EINVAL;
		goto bad;
	}
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
		r = LOOP_RET_UNMAPPABLE;
		goto bad;
	}

	/*
	 * A reload over this device's own pin, or a loader FIEMAP cannot
	 * serve, on XFS with map_blocks(): XFS's own map, which needs no user
	 * memory and cannot race the live table's writes into holes the way
	 * FIEMAP and its witness would (a reload's table is read again at
	 * preresume anyway).
	 */
	if ((reloading || !fiemap) && loop_sparse_possible(lc) && !loop_sparse_probe(lc)) {
		r = loop_sparse_walk(lc, &t);
		if (r)
			goto bad;
		lc->walk = LOOP_WALK_MAP_BLOCKS;
		goto walked;
	}

	/* The walk that counts: under the pin, bmap() at every extent's ends. */
	r = fiemap ? loop_walk_fiemap(lc, &buf, true) : LOOP_RET_NO_FIEMAP;
	if (r == LOOP_RET_NO_FIEMAP) {
		kvfree(buf.v);
		buf = (struct loop_extent_buf){};
		/* Another thread shares the loader's memory: as above, on XFS. */
		if (loop_sparse_possible(lc) && !loop_sparse_probe(lc)) {
			r = loop_sparse_walk(lc, &t);
			if (r)
				goto bad;
			lc->walk = LOOP_WALK_MAP_BLOCKS;
			goto walked;
		}
		lc->sparse = false;
		r = loop_walk_bmap(lc, &buf);
	}
	if (r)
		goto bad;
	if (walked && !loop_extents_equal(&seen, &buf)) {
		lc->reason = LOOP_REASON_CHANGED;
		r = LOOP_RET_UNMAPPABLE;
		goto bad;
	}
	kvfree(seen.v);
	seen.v = NULL;

	/* A reload's probe ran under its own pin; a new pin's already did. */
	if (reloading && loop_buf_sparse(&buf) && loop_sparse_probe(lc)) {
		lc->ti->error = "Cannot map the file's blocks";
		r = -EIO;
		goto bad;
	}
	/* The last block may reach past the device's end. */
	buf.v[buf.nr - 1].len = lc->ti->len - buf.v[buf.nr - 1].dev_sector;
	t = loop_table_build(buf.v, buf.nr);
	if (!t) {
		lc->ti->error = "Cannot allocate extent table";
		r = -ENOMEM;
		goto bad;
	}
walked:
	lc->sparse = t->holes || t->unwritten;
	lc->refresh = lc->sparse && reloading;
	r = loop_inode_check_sparse(lc);
	if (!r && lc->sparse)
		r = loop_sparse_setup(lc);
	if (r) {
		if (r == -ENOMEM)
			lc->ti->error = "Cannot allocate the sparse table's bio set";
		loop_table_free(t);
		lc->sparse = false;
		goto bad;
	}
	RCU_INIT_POINTER(lc->table, t);
	kvfree(seen.v);
	kvfree(buf.v);

	lc->ti->num_flush_bios = 1;
	return 0;

in_use:
	lc->reason = LOOP_REASON_IN_USE;
	r = LOOP_RET_UNMAPPABLE;
	goto out;
bad:
	loop_inode_unpin(lc);
out:
	kvfree(seen.v);
	kvfree(buf.v);
	lc->host_bdev = NULL;
	lc->sparse = false;
	/* 1 (file mode) only with a reason; a filesystem's errno stays one. */
	if (r > 0 && lc->reason == LOOP_REASON_NONE) {
		lc->ti->error = "Cannot read the file's layout";
		r = -EIO;
	}
	return r > 0 ? 1 : r;
}

void loop_block_teardown(struct loop_c *lc)
{
	if (lc->pinned)
		invalidate_inode_pages2(lc->file->f_mapping);
	loop_inode_unpin(lc);
	/* No bio is left, nor map(): no reader of the table either. */
	loop_table_free(rcu_dereference_protected(lc->table, 1));
	RCU_INIT_POINTER(lc->table, NULL);
}

/* Extents in the live table (0 in file mode). */
unsigned int loop_nr_extents(struct loop_c *lc)
{
	struct loop_table *t;
	unsigned int nr;

	rcu_read_lock();
	t = rcu_dereference(lc->table);
	nr = t ? t->nr : 0;
	rcu_read_unlock();
	return nr;
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
	rcu_read_lock();
	e = loop_find_extent(rcu_dereference(lc->table), sector);
	left = e->dev_sector + e->len - sector;
	if (bio_sectors(bio) > left) {
		dm_accept_partial_bio(bio, left);
		loop_stat_inc(lc, splits);
	}
	if (unlikely(!loop_ext_written(e))) {
		rcu_read_unlock();
		return loop_sparse_map(lc, bio);
	}
	bio->bi_iter.bi_sector = e->host_sector + (sector - e->dev_sector);
	rcu_read_unlock();

	if (op_is_write(bio_op(bio)))
		loop_stat_inc(lc, writes);
	else
		loop_stat_inc(lc, reads);
	return DM_MAPIO_REMAPPED;
}
