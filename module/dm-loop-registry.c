// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop: the registry of backing inodes and of loop targets.
 *
 * Both modes call in here, and nothing here calls back into them or into
 * the target: which device pins a file (block mode), how many use it
 * (file mode), and which files the loaded tables are on, for the check
 * that no device is stacked on itself.
 */
#include <linux/hashtable.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>
#include <linux/slab.h>

#include "dm-loop.h"

/*
 * Registry of backing inodes.  A reload runs the new table's constructor
 * before the old table's destructor, so a pin is counted and owned by the
 * mapped device: the same device may pin a file again, any other gets EBUSY.
 * File-mode users are counted, whichever devices they belong to: while
 * there is one, no table pins the file (S_SWAPFILE would fail its writes),
 * and a new table over it gets file mode, reason in_use.
 */
struct loop_inode {
	struct hlist_node node;
	struct inode *inode;
	struct mapped_device *pin_owner;
	unsigned int pins;
	struct list_head pinners;	/* the pinning targets' pin_node */
	unsigned int file_users;
	gfp_t old_gfp_mask;
};

static DEFINE_MUTEX(loop_registry_lock);
static DEFINE_HASHTABLE(loop_inodes, 10);

static struct loop_inode *loop_inode_lookup(struct inode *inode, bool create)
{
	struct loop_inode *li;

	lockdep_assert_held(&loop_registry_lock);
	hash_for_each_possible(loop_inodes, li, node, (unsigned long)inode)
		if (li->inode == inode)
			return li;
	if (!create)
		return NULL;
	li = kzalloc(sizeof(*li), GFP_KERNEL);
	if (li) {
		li->inode = inode;
		INIT_LIST_HEAD(&li->pinners);
		hash_add(loop_inodes, &li->node, (unsigned long)inode);
	}
	return li;
}

static void loop_inode_release(struct loop_inode *li)
{
	if (!li->pins && !li->file_users) {
		hash_del(&li->node);
		kfree(li);
	}
}

/* The file's entry, made if there is none; NULL (ti->error set) without memory. */
static struct loop_inode *loop_inode_get(struct loop_c *lc)
{
	struct loop_inode *li = loop_inode_lookup(file_inode(lc->file), true);

	if (!li)
		lc->ti->error = "Cannot allocate inode registry entry";
	return li;
}

/*
 * Who holds the file, for a pin: 1 this device's pin (a reload), -EBUSY
 * another device's (ti->error set), -EAGAIN a file-mode table, 0 no one.
 */
static int loop_inode_holders(struct loop_c *lc, const struct loop_inode *li)
{
	if (li && li->pins) {
		if (li->pin_owner == lc->md)
			return 1;
		lc->ti->error = "File is already mapped by another dm-loop device";
		return -EBUSY;
	}
	/* A file-mode table, this device's live one or another's: file mode. */
	return li && li->file_users ? -EAGAIN : 0;
}

/*
 * Pin the file's layout as swapon does (mm/swapfile.c).  Returns 0 for a
 * new pin, 1 when this device's live table already holds it (a reload),
 * -EAGAIN when a file-mode table uses the file, else an error.
 */
int loop_inode_pin(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct loop_inode *li;
	int r = 0;

	mutex_lock(&loop_registry_lock);
	li = loop_inode_get(lc);
	if (!li) {
		r = -ENOMEM;
		goto out;
	}
	r = loop_inode_holders(lc, li);
	if (r == 1)
		li->pins++;
	if (r == -EAGAIN)
		goto out_release;
	if (r)
		goto out;

	inode_lock(inode);
	if (IS_SWAPFILE(inode)) {
		inode_unlock(inode);
		lc->ti->error = "File is in use as a swapfile";
		r = -EBUSY;
		goto out_release;
	}
	inode->i_flags |= S_SWAPFILE;
	r = inode_drain_writes(inode);
	if (r) {
		inode->i_flags &= ~S_SWAPFILE;
		inode_unlock(inode);
		lc->ti->error = "Cannot drain writes to the file";
		goto out_release;
	}
	inode_unlock(inode);
	li->pins = 1;
	li->pin_owner = lc->md;
	goto out;

out_release:
	loop_inode_release(li);
out:
	if (r >= 0)
		list_add(&lc->pin_node, &li->pinners);
	mutex_unlock(&loop_registry_lock);
	if (r >= 0)
		lc->pinned = true;
	return r;
}

/*
 * Each target over a sparse file has its own table of its ranges and
 * allocates on its own (dm-loop-sparse.c): two in one table over the same
 * file would write zeros over the rest of a block the other wrote, and
 * read zeros where the other wrote.  So a sparse file backs one target of
 * a table (a reload's new table and the live one take turns: see
 * loop_sparse_refresh()).  0, or -EBUSY with ti->error set.
 */
int loop_inode_check_sparse(struct loop_c *lc)
{
	struct loop_inode *li;
	struct loop_c *c;
	int r = 0;

	mutex_lock(&loop_registry_lock);
	/* Pinned: the file has its entry, and lc is on its list. */
	li = loop_inode_lookup(file_inode(lc->file), false);
	list_for_each_entry(c, &li->pinners, pin_node) {
		if (c != lc && c->ti->table == lc->ti->table && (c->sparse || lc->sparse)) {
			lc->ti->error = "A sparse file can back only one target of a table";
			r = -EBUSY;
			break;
		}
	}
	mutex_unlock(&loop_registry_lock);
	return r;
}

/*
 * What loop_inode_pin() would find, without pinning: block mode walks the
 * file before it pins it, and needs to know first whether it may.
 * Returns 1 when this device's live table holds the pin (a reload), 0 when
 * nothing holds the file, -EAGAIN when a file-mode table uses it, -EBUSY
 * (ti->error set) when another device pins it or it is a swapfile.
 */
int loop_inode_probe(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct loop_inode *li;
	int r;

	mutex_lock(&loop_registry_lock);
	li = loop_inode_lookup(inode, false);
	r = loop_inode_holders(lc, li);
	if (!r && IS_SWAPFILE(inode)) {
		lc->ti->error = "File is in use as a swapfile";
		r = -EBUSY;
	}
	mutex_unlock(&loop_registry_lock);
	return r;
}

void loop_inode_unpin(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct loop_inode *li;

	if (!lc->pinned)
		return;
	lc->pinned = false;

	mutex_lock(&loop_registry_lock);
	list_del_init(&lc->pin_node);
	li = loop_inode_lookup(inode, false);
	if (!WARN_ON_ONCE(!li || !li->pins) && !--li->pins) {
		inode_lock(inode);
		inode->i_flags &= ~S_SWAPFILE;
		inode_unlock(inode);
		li->pin_owner = NULL;
		loop_inode_release(li);
	}
	mutex_unlock(&loop_registry_lock);
}

/*
 * File mode does not pin (S_SWAPFILE would refuse our own writes), but its
 * page cache allocations must not recurse into the filesystem or block
 * layer while we are writing back on their behalf, as in loop.
 */
int loop_inode_use(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct address_space *mapping = lc->file->f_mapping;
	struct loop_inode *li;
	int r = 0;

	mutex_lock(&loop_registry_lock);
	li = loop_inode_get(lc);
	if (!li) {
		r = -ENOMEM;
		goto out;
	}
	/*
	 * Even this device's own block-mode table (a reload): S_SWAPFILE would
	 * fail our writes until that table is destroyed, after the resume.
	 */
	if (li->pins) {
		lc->ti->error = "File is mapped by a block-mode dm-loop device";
		r = -EBUSY;
	} else if (IS_SWAPFILE(inode)) {
		lc->ti->error = "File is in use as a swapfile";
		r = -EBUSY;
	}
	if (r) {
		loop_inode_release(li);
		goto out;
	}
	if (!li->file_users++) {
		li->old_gfp_mask = mapping_gfp_mask(mapping);
		mapping_set_gfp_mask(mapping,
				     li->old_gfp_mask & ~(__GFP_IO | __GFP_FS));
	}
	lc->file_user = true;
out:
	mutex_unlock(&loop_registry_lock);
	return r;
}

void loop_inode_unuse(struct loop_c *lc)
{
	struct loop_inode *li;

	if (!lc->file_user)
		return;
	lc->file_user = false;

	mutex_lock(&loop_registry_lock);
	li = loop_inode_lookup(file_inode(lc->file), false);
	if (!WARN_ON_ONCE(!li || !li->file_users) && !--li->file_users) {
		mapping_set_gfp_mask(lc->file->f_mapping, li->old_gfp_mask);
		loop_inode_release(li);
	}
	mutex_unlock(&loop_registry_lock);
}

/*
 * Every loop target that exists, live or only loaded, for
 * loop_check_stack(); under loop_registry_lock.
 */
static LIST_HEAD(loop_contexts);
/* Of them, those whose file is on a device-mapper disk. */
static unsigned int loop_nr_on_dm;

/*
 * Refuse a file whose filesystem sits on this very device, directly or
 * through dm-loop devices below it (loop.c's loop_validate_file() is the
 * model): each bio would come back to the device, forever in block mode,
 * to a worker waiting on itself in file mode.  The walk goes from the
 * file's disk to the files of the dm-loop targets on that disk, live
 * tables and loaded ones alike, and on down.  A table that passes joins
 * loop_contexts in the same critical section, so that two tables loaded
 * at once each see the other.
 */
int loop_check_stack(struct loop_c *lc)
{
	/* loop_file_bdev()'s superblock: the real inode's, under overlayfs. */
	struct super_block *sb = d_real_inode(lc->file->f_path.dentry)->i_sb;
	struct block_device *bdev = sb->s_bdev;
	const struct gendisk *self = dm_disk(lc->md);
	const struct gendisk *disks[LOOP_MAX_STACK];
	unsigned int nr = 0, i, j;
	struct loop_c *c;
	int r = 0;

	lc->file_disk = bdev ? bdev->bd_disk : NULL;
	lc->file_on_dm = lc->file_disk && lc->file_disk->fops == self->fops;
	/*
	 * The depth, for file mode's workqueues: one more than the deepest
	 * dm-loop device under the file's filesystem; at least 1 where the
	 * disk is another device-mapper device with no dm-loop target (dm-linear
	 * from kpartx, LVM, dm-crypt: a dm-loop device may be under it) or the
	 * filesystem hides its disks (btrfs has no s_bdev).  Deeper stacks
	 * through those are not followed (dm-loop.rst, "Stacking").
	 */
	lc->depth = lc->file_on_dm || (!bdev && (sb->s_type->fs_flags & FS_REQUIRES_DEV));
	mutex_lock(&loop_registry_lock);
	if (bdev)
		disks[nr++] = bdev->bd_disk;
	for (i = 0; i < nr && !r; i++) {
		if (disks[i] == self) {
			lc->ti->error = i ? "File is on a dm-loop device stacked on this device" :
					    "File is on a filesystem on this device";
			r = -ELOOP;
			break;
		}
		/* Only a device-mapper disk can hold dm-loop targets. */
		if (disks[i]->fops != self->fops)
			continue;
		list_for_each_entry(c, &loop_contexts, stack_node) {
			if (dm_disk(c->md) != disks[i])
				continue;
			/* A device below: our workers may wait for its. */
			lc->depth = max(lc->depth, c->depth + 1);
			if (!c->file_disk)
				continue;
			for (j = 0; j < nr && disks[j] != c->file_disk; j++)
				;
			if (j < nr)
				continue;
			if (nr == LOOP_MAX_STACK) {
				lc->ti->error = "Too many dm-loop devices stacked under the file";
				r = -ELOOP;
				break;
			}
			disks[nr++] = c->file_disk;
		}
	}
	if (!r && lc->depth >= LOOP_MAX_STACK) {
		lc->ti->error = "Too many dm-loop devices stacked under the file";
		r = -ELOOP;
	}
	/*
	 * A device above (its file on our disk) must stay deeper than we are:
	 * its workers wait for ours, on the workqueue of its own depth.  A
	 * reload onto a deeper file can break that.  Only a table over a file
	 * on a device-mapper disk can be above us, and it has depth 1 at
	 * least: at depth 0, or with no such table, nothing to walk (100,000
	 * devices over plain disks load without a walk).
	 */
	if (!r && lc->depth && loop_nr_on_dm) {
		list_for_each_entry(c, &loop_contexts, stack_node) {
			if (c->file_disk == self && c->depth <= lc->depth) {
				DMERR("%s: %s is stacked on this device and would be under it",
				      lc->path, dm_device_name(c->md));
				lc->ti->error = "A device stacked on this one would be under it";
				r = -ELOOP;
				break;
			}
		}
	}
	if (!r) {
		list_add(&lc->stack_node, &loop_contexts);
		loop_nr_on_dm += lc->file_on_dm;
	}
	mutex_unlock(&loop_registry_lock);
	return r;
}

void loop_uncheck_stack(struct loop_c *lc)
{
	if (list_empty(&lc->stack_node))
		return;
	mutex_lock(&loop_registry_lock);
	list_del_init(&lc->stack_node);
	loop_nr_on_dm -= lc->file_on_dm;
	mutex_unlock(&loop_registry_lock);
}
