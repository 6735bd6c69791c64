// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop: the target, its table line, mode selection, status and messages.
 *
 * Block mode lives in dm-loop-block.c, file mode in dm-loop-file.c and the
 * debugfs view in dm-loop-debugfs.c.
 */
#include <linux/module.h>
#include <linux/init.h>
#include <linux/slab.h>
#include <linux/namei.h>
#include <linux/pagemap.h>
#include <linux/ktime.h>
#include <linux/fscrypt.h>
#include <linux/file.h>
#include <linux/ctype.h>

#include "dm-loop.h"
#include "compat.h"

static const char * const loop_reason_names[LOOP_REASON_MAX] = {
	[LOOP_REASON_NONE]		= "-",
	[LOOP_REASON_FORCED]		= "forced",
	[LOOP_REASON_NO_BDEV]		= "no_bdev",
	[LOOP_REASON_NO_BMAP]		= "no_bmap",
	[LOOP_REASON_FS_NOT_ALLOWED]	= "fs_not_allowed",
	[LOOP_REASON_ENCRYPTED]		= "encrypted",
	[LOOP_REASON_DAX]		= "dax",
	[LOOP_REASON_UNALIGNED_OFFSET]	= "unaligned_offset",
	[LOOP_REASON_UNMAPPED]		= "unmapped",
	[LOOP_REASON_IN_USE]		= "in_use",
	[LOOP_REASON_NO_DIO]		= "no_dio",
	[LOOP_REASON_VERITY]		= "verity",
	[LOOP_REASON_MMAPPED]		= "mmapped",
	[LOOP_REASON_CACHE_BUSY]	= "cache_busy",
	[LOOP_REASON_FROZEN]		= "frozen",
	[LOOP_REASON_HOLE]		= "hole",
	[LOOP_REASON_UNWRITTEN]		= "unwritten",
	[LOOP_REASON_SHARED]		= "shared",
	[LOOP_REASON_DELALLOC]		= "delalloc",
	[LOOP_REASON_INLINE]		= "inline",
	[LOOP_REASON_TAIL]		= "tail",
	[LOOP_REASON_ENCRYPTED_EXTENT]	= "encrypted",
	[LOOP_REASON_ENCODED]		= "encoded",
	[LOOP_REASON_NOT_ALIGNED]	= "not_aligned",
	[LOOP_REASON_UNKNOWN]		= "unknown",
	[LOOP_REASON_BMAP_MISMATCH]	= "bmap_mismatch",
	[LOOP_REASON_CHANGED]		= "changed",
};

/* ti->error outlives the constructor: these are literals. */
static char * const loop_require_block_errors[LOOP_REASON_MAX] = {
	[LOOP_REASON_FORCED]		= "Block mode required but file mode forced",
	[LOOP_REASON_NO_BDEV]		= "Block mode not possible: no block device",
	[LOOP_REASON_NO_BMAP]		= "Block mode not possible: filesystem has no bmap",
	[LOOP_REASON_FS_NOT_ALLOWED]	= "Block mode not possible: bmap not known safe here",
	[LOOP_REASON_ENCRYPTED]		= "Block mode not possible: file is encrypted",
	[LOOP_REASON_DAX]		= "Block mode not possible: file uses DAX",
	[LOOP_REASON_UNALIGNED_OFFSET]	= "Block mode not possible: offset not block aligned",
	[LOOP_REASON_UNMAPPED]		= "Block mode not possible: hole, unwritten or shared",
	[LOOP_REASON_IN_USE]		= "Block mode not possible: file used by a file-mode table",
	[LOOP_REASON_NO_DIO]		= "Block mode not possible: file cannot do direct I/O",
	[LOOP_REASON_VERITY]		= "Block mode not possible: file has fs-verity",
	[LOOP_REASON_MMAPPED]		= "Block mode not possible: file is mapped writable",
	[LOOP_REASON_CACHE_BUSY]	= "Block mode not possible: page cache cannot be dropped",
	[LOOP_REASON_FROZEN]		= "Block mode not possible: filesystem is frozen",
	[LOOP_REASON_HOLE]		= "Block mode not possible: hole, unwritten or shared",
	[LOOP_REASON_UNWRITTEN]		= "Block mode not possible: hole, unwritten or shared",
	[LOOP_REASON_SHARED]		= "Block mode not possible: hole, unwritten or shared",
	[LOOP_REASON_DELALLOC]		= "Block mode not possible: blocks not yet allocated",
	[LOOP_REASON_INLINE]		= "Block mode not possible: data inline in metadata",
	[LOOP_REASON_TAIL]		= "Block mode not possible: data packed in a tail",
	[LOOP_REASON_ENCRYPTED_EXTENT]	= "Block mode not possible: extent is encrypted",
	[LOOP_REASON_ENCODED]		= "Block mode not possible: extent is encoded",
	[LOOP_REASON_NOT_ALIGNED]	= "Block mode not possible: extent not block aligned",
	[LOOP_REASON_UNKNOWN]		= "Block mode not possible: extent of unknown kind",
	[LOOP_REASON_BMAP_MISMATCH]	= "Block mode not possible: bmap and FIEMAP disagree",
	[LOOP_REASON_CHANGED]		= "Block mode not possible: layout changed while loading",
};

static const char * const loop_walk_names[] = {
	[LOOP_WALK_NONE]	= "none",
	[LOOP_WALK_FIEMAP]	= "fiemap",
	[LOOP_WALK_BMAP]	= "bmap",
	[LOOP_WALK_MAP_BLOCKS]	= "map_blocks",
};

/* Filesystems whose ->bmap is known to return 0 for anything unsafe. */
static const char * const loop_bmap_safe_fs[] = { "ext2", "ext3", "ext4", "xfs" };

static atomic_t loop_next_id = ATOMIC_INIT(0);

/* Module-wide figures, read through /sys/module/dm_loop/parameters/. */
static atomic_t loop_block_devices = ATOMIC_INIT(0);
static atomic_t loop_file_devices = ATOMIC_INIT(0);
static atomic_long_t loop_total_extents = ATOMIC_LONG_INIT(0);
static atomic_long_t loop_total_table_bytes = ATOMIC_LONG_INIT(0);

static int loop_param_get_atomic(char *buffer, const struct kernel_param *kp)
{
	return sprintf(buffer, "%d\n", atomic_read((atomic_t *)kp->arg));
}

static int loop_param_get_atomic_long(char *buffer, const struct kernel_param *kp)
{
	return sprintf(buffer, "%ld\n", atomic_long_read((atomic_long_t *)kp->arg));
}

static const struct kernel_param_ops loop_atomic_ops = {
	.get = loop_param_get_atomic,
};

static const struct kernel_param_ops loop_atomic_long_ops = {
	.get = loop_param_get_atomic_long,
};

module_param_cb(block_devices, &loop_atomic_ops, &loop_block_devices, 0444);
MODULE_PARM_DESC(block_devices, "Targets in block mode");
module_param_cb(file_devices, &loop_atomic_ops, &loop_file_devices, 0444);
MODULE_PARM_DESC(file_devices, "Targets in file mode");
module_param_cb(total_extents, &loop_atomic_long_ops, &loop_total_extents, 0444);
MODULE_PARM_DESC(total_extents, "Extents in all block-mode tables");
module_param_cb(table_bytes, &loop_atomic_long_ops, &loop_total_table_bytes, 0444);
MODULE_PARM_DESC(table_bytes, "Bytes of memory used by all extent tables");

const char *loop_mode_name(struct loop_c *lc)
{
	return lc->mode == LOOP_MODE_BLOCK ? "block" : "file";
}

/* The reason token: "-", "no_bdev", ..., "unmapped:<file block>". */
int loop_reason_format(struct loop_c *lc, char *buf, size_t size)
{
	struct loop_table *t;
	int n = 0;

	/* Block mode over a sparse file: how many ranges are not yet written. */
	if (lc->mode == LOOP_MODE_BLOCK && lc->sparse) {
		rcu_read_lock();
		t = rcu_dereference(lc->table);
		if (t && (t->holes || t->unwritten))
			n = scnprintf(buf, size, "holes:%u/unwritten:%u", t->holes, t->unwritten);
		rcu_read_unlock();
		if (n)
			return n;
	}
	if (lc->reason == LOOP_REASON_UNMAPPED ||
	    (lc->reason >= LOOP_REASON_HOLE && lc->reason <= LOOP_REASON_BMAP_MISMATCH))
		return scnprintf(buf, size, "%s:%llu", loop_reason_names[lc->reason],
				 (unsigned long long)lc->unmapped_block);
	return scnprintf(buf, size, "%s", loop_reason_names[lc->reason]);
}

/* The extents' bytes: the table's header is the device's, as loop_c is. */
size_t loop_table_bytes(struct loop_c *lc)
{
	return (size_t)loop_nr_extents(lc) * sizeof(struct loop_extent);
}

/* A sparse table replaced by @new: the module-wide figures follow. */
void loop_table_account(struct loop_table *old, struct loop_table *new)
{
	long d = (long)new->nr - (long)old->nr;

	atomic_long_add(d, &loop_total_extents);
	atomic_long_add(d * (long)sizeof(struct loop_extent), &loop_total_table_bytes);
}

void loop_stats_sum(struct loop_c *lc, struct loop_stats *sum)
{
	int cpu;

	memset(sum, 0, sizeof(*sum));
	for_each_possible_cpu(cpu) {
		struct loop_stats *s = per_cpu_ptr(lc->stats, cpu);

		sum->reads += READ_ONCE(s->reads);
		sum->writes += READ_ONCE(s->writes);
		sum->flushes += READ_ONCE(s->flushes);
		sum->discards += READ_ONCE(s->discards);
		sum->splits += READ_ONCE(s->splits);
		sum->direct_ios += READ_ONCE(s->direct_ios);
		sum->buffered_ios += READ_ONCE(s->buffered_ios);
		sum->errors += READ_ONCE(s->errors);
	}
}

static void loop_stats_reset(struct loop_c *lc)
{
	int cpu;

	for_each_possible_cpu(cpu)
		memset(per_cpu_ptr(lc->stats, cpu), 0, sizeof(struct loop_stats));
}

size_t loop_format_info(struct loop_c *lc, char *buf, size_t size)
{
	struct inode *inode = file_inode(lc->file);
	struct loop_stats st;
	char reason[48];
	size_t n = 0;

	loop_stats_sum(lc, &st);
	loop_reason_format(lc, reason, sizeof(reason));
	n += scnprintf(buf + n, size - n,
		       "version: %s\nmode: %s\nreason: %s\npath: %s\ninode: %llu\n"
		       "host_dev: %u:%u\noffset: %lld\nfs_block_size: %u\n"
		       "dev_sectors: %llu\nextents: %u\ntable_bytes: %zu\n"
		       "setup_ns: %llu\n",
		       DM_LOOP_VERSION, loop_mode_name(lc), reason, lc->path,
		       (unsigned long long)inode->i_ino, MAJOR(lc->host_dev), MINOR(lc->host_dev),
		       lc->offset, lc->block_size,
		       (unsigned long long)lc->ti->len, loop_nr_extents(lc),
		       loop_table_bytes(lc), lc->setup_ns);
	n += scnprintf(buf + n, size - n,
		       "reads: %llu\nwrites: %llu\nflushes: %llu\nsplits: %llu\n"
		       "direct_ios: %llu\nbuffered_ios: %llu\ndiscards: %llu\n"
		       "errors: %llu\nread_only: %d\nwalk: %s\nworkers: %u\n"
		       "stack_depth: %u\n",
		       st.reads, st.writes, st.flushes, st.splits,
		       st.direct_ios, st.buffered_ios, st.discards, st.errors,
		       lc->read_only, loop_walk_names[lc->walk],
		       lc->mode == LOOP_MODE_FILE ? lc->nr_workers : 0, lc->depth);
	return n;
}

static int loop_parse_opts(struct dm_arg_set *as, struct loop_c *lc)
{
	static const struct dm_arg _args[] = {
		{0, 5, "Invalid number of optional arguments"},
	};
	struct dm_target *ti = lc->ti;
	unsigned int argc;
	const char *arg;
	int r;

	if (!as->argc)
		return 0;
	/* dm_read_arg_group()'s sscanf() wraps 2^32 + n and 2^64 + n to n. */
	if (kstrtouint(as->argv[0], 10, &argc)) {
		ti->error = _args[0].error;
		return -EINVAL;
	}
	r = dm_read_arg_group(_args, as, &argc, &ti->error);
	if (r)
		return r;

	while (argc--) {
		unsigned int opt;

		arg = dm_shift_arg(as);
		if (!strcasecmp(arg, "require_block")) {
			opt = LOOP_OPT_REQUIRE_BLOCK;
		} else if (!strcasecmp(arg, "force_file")) {
			opt = LOOP_OPT_FORCE_FILE;
		} else if (!strcasecmp(arg, "no_direct_io")) {
			opt = LOOP_OPT_NO_DIRECT_IO;
		} else if (!strcasecmp(arg, "workers")) {
			opt = LOOP_OPT_WORKERS;
			if (!argc--) {
				ti->error = "workers needs a count";
				return -EINVAL;
			}
			arg = dm_shift_arg(as);
			if (!(lc->opts & opt) &&
			    (kstrtouint(arg, 10, &lc->nr_workers) || !lc->nr_workers ||
			     lc->nr_workers > LOOP_MAX_WORKERS)) {
				ti->error = "Invalid number of workers: 1 to "
					    __stringify(LOOP_MAX_WORKERS);
				return -EINVAL;
			}
		} else {
			ti->error = "Unrecognised optional argument";
			return -EINVAL;
		}
		if (lc->opts & opt) {
			ti->error = "Duplicate optional argument";
			return -EINVAL;
		}
		lc->opts |= opt;
	}
	if ((lc->opts & LOOP_OPT_REQUIRE_BLOCK) && (lc->opts & LOOP_OPT_FORCE_FILE)) {
		ti->error = "require_block and force_file are mutually exclusive";
		return -EINVAL;
	}
	if (as->argc) {
		ti->error = "Unexpected arguments after the optional arguments";
		return -EINVAL;
	}
	return 0;
}

/*
 * Open exactly the regular file the path names: check the type on the
 * looked-up dentry, then open that dentry, so that a FIFO or device swapped
 * in between is never opened.
 */
static int loop_open_file(struct loop_c *lc)
{
	struct dm_target *ti = lc->ti;
	struct path path;
	struct file *file;
	int r;

	r = kern_path(lc->path, LOOKUP_FOLLOW, &path);
	if (r) {
		ti->error = r == -ENOENT ? "File does not exist" : "File lookup failed";
		return r;
	}
	if (!d_is_reg(path.dentry)) {
		ti->error = d_is_dir(path.dentry) ? "File is a directory" :
						    "Not a regular file";
		path_put(&path);
		return -EINVAL;
	}
	/* dentry_open() skips may_open(): refuse what it would refuse a writer. */
	if (!lc->read_only &&
	    (IS_IMMUTABLE(d_inode(path.dentry)) || IS_APPEND(d_inode(path.dentry)))) {
		ti->error = "File is immutable or append-only (use a read-only table)";
		path_put(&path);
		return -EPERM;
	}
	file = dentry_open(&path, (lc->read_only ? O_RDONLY : O_RDWR) | O_LARGEFILE,
			   current_cred());
	path_put(&path);
	if (IS_ERR(file)) {
		r = PTR_ERR(file);
		if (r == -EROFS)
			ti->error = "File is on a read-only filesystem (use a read-only table)";
		else if (r == -ETXTBSY)
			ti->error = "File is busy (in use as a swapfile or executable)";
		else
			ti->error = "Cannot open file";
		return r;
	}
	lc->file = file;
	return 0;
}

static bool loop_fs_bmap_safe(struct super_block *sb)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(loop_bmap_safe_fs); i++)
		if (!strcmp(sb->s_type->name, loop_bmap_safe_fs[i]))
			return true;
	return false;
}

/* DESIGN.md section 2, steps 2 and 3: what rules block mode out up front. */
static enum loop_reason loop_static_reason(struct loop_c *lc)
{
	struct inode *inode = file_inode(lc->file);
	struct super_block *sb = inode->i_sb;
	struct kstat stat;

	if (lc->opts & LOOP_OPT_FORCE_FILE)
		return LOOP_REASON_FORCED;
	/* btrfs lives on block devices but leaves s_bdev NULL: say no_bmap. */
	if (!(sb->s_type->fs_flags & FS_REQUIRES_DEV))
		return LOOP_REASON_NO_BDEV;
	if (!inode->i_mapping->a_ops->bmap)
		return LOOP_REASON_NO_BMAP;
	if (!sb->s_bdev)
		return LOOP_REASON_NO_BDEV;
	if (!loop_fs_bmap_safe(sb))
		return LOOP_REASON_FS_NOT_ALLOWED;
	if (IS_ENCRYPTED(inode))
		return LOOP_REASON_ENCRYPTED;
	if (IS_DAX(inode))
		return LOOP_REASON_DAX;
	/* Block mode would read the blocks without verifying them. */
	if (IS_VERITY(inode))
		return LOOP_REASON_VERITY;
	/*
	 * A file the filesystem will not do direct I/O on (ext4: journalled
	 * data, inline data, verity, crypto without inline encryption) has
	 * data that is not simply in its blocks: with data=journal a replay or
	 * checkpoint of the journal writes over what the device wrote.
	 */
	if (!vfs_getattr(&lc->file->f_path, &stat, STATX_DIOALIGN, AT_STATX_SYNC_AS_STAT) &&
	    (stat.result_mask & STATX_DIOALIGN) && !stat.dio_mem_align)
		return LOOP_REASON_NO_DIO;
	if (lc->offset & (lc->block_size - 1))
		return LOOP_REASON_UNALIGNED_OFFSET;
	return LOOP_REASON_NONE;
}

static void loop_account(struct loop_c *lc, int sign)
{
	if (lc->mode == LOOP_MODE_BLOCK) {
		atomic_add(sign, &loop_block_devices);
		atomic_long_add(sign * (long)loop_nr_extents(lc), &loop_total_extents);
		atomic_long_add(sign * (long)loop_table_bytes(lc), &loop_total_table_bytes);
	} else {
		atomic_add(sign, &loop_file_devices);
	}
}

static void loop_dtr(struct dm_target *ti)
{
	struct loop_c *lc = ti->private;

	/* The worker may still replace the table (and count it) after dm's last bio. */
	if (lc->sparse)
		loop_sparse_teardown(lc);
	if (lc->id) {
		loop_debugfs_remove(lc);
		loop_account(lc, -1);
	}
	loop_uncheck_stack(lc);
	if (lc->file) {
		if (lc->mode == LOOP_MODE_BLOCK)
			loop_block_teardown(lc);
		else
			loop_file_teardown(lc);
		fput(lc->file);
	}
	free_percpu(lc->stats);
	kfree(lc->path);
	kfree(lc);
}

/*
 * Construct a loop mapping:
 * <file path> <offset> [<#opt_args> <opt_args>...]
 */
static int loop_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as;
	struct loop_c *lc;
	struct inode *inode;
	unsigned long long tmp;
	u64 start_ns = ktime_get_ns();
	const char *c;
	loff_t end;
	int r;

	if (argc < 2) {
		ti->error = "Invalid argument count: need <file path> <offset>";
		return -EINVAL;
	}

	lc = kzalloc(sizeof(*lc), GFP_KERNEL);
	if (!lc) {
		ti->error = "Cannot allocate loop context";
		return -ENOMEM;
	}
	lc->ti = ti;
	lc->md = dm_table_get_md(ti->table);
	lc->read_only = !(dm_table_get_mode(ti->table) & FMODE_WRITE);
	spin_lock_init(&lc->lock);
	init_waitqueue_head(&lc->drain);
	bio_list_init(&lc->pending);
	mutex_init(&lc->alloc_lock);
	INIT_WORK(&lc->sparse_work, loop_sparse_work);
	INIT_LIST_HEAD(&lc->stack_node);
	INIT_LIST_HEAD(&lc->pin_node);
	ti->private = lc;

	r = -EINVAL;
	if (argv[0][0] != '/') {
		ti->error = "File path must be absolute";
		goto bad;
	}
	if (strnlen(argv[0], PATH_MAX) >= PATH_MAX) {
		ti->error = "File path too long";
		goto bad;
	}
	/* Only an escaped one gets here, and the TABLE line could not show it. */
	for (c = argv[0]; *c; c++) {
		if (isspace(*c)) {
			ti->error = "File path contains whitespace";
			goto bad;
		}
	}
	if (kstrtoull(argv[1], 10, &tmp) || tmp > LLONG_MAX) {
		ti->error = "Invalid offset";
		goto bad;
	}
	lc->offset = tmp;
	if (lc->offset & (SECTOR_SIZE - 1)) {
		ti->error = "Offset not a multiple of 512 bytes";
		goto bad;
	}

	as.argc = argc - 2;
	as.argv = argv + 2;
	r = loop_parse_opts(&as, lc);
	if (r)
		goto bad;

	r = -ENOMEM;
	lc->path = kstrdup(argv[0], GFP_KERNEL);
	lc->stats = alloc_percpu(struct loop_stats);
	if (!lc->path || !lc->stats) {
		ti->error = "Cannot allocate loop context";
		goto bad;
	}

	r = loop_open_file(lc);
	if (r)
		goto bad;
	inode = file_inode(lc->file);
	lc->block_size = i_blocksize(inode);
	lc->host_dev = inode->i_sb->s_dev;

	r = -EINVAL;
	if (lc->offset >= i_size_read(inode)) {
		ti->error = "Offset beyond end of file";
		goto bad;
	}
	if (check_add_overflow(lc->offset, (loff_t)(ti->len << SECTOR_SHIFT), &end) ||
	    ti->len > (LLONG_MAX >> SECTOR_SHIFT) || end > i_size_read(inode)) {
		ti->error = "Device length reaches past end of file";
		goto bad;
	}

	r = loop_check_stack(lc);
	if (r)
		goto bad;

	lc->reason = loop_static_reason(lc);
	if (lc->reason == LOOP_REASON_NONE) {
		/* < 0: error; > 0: file mode, lc->reason says why. */
		r = loop_block_setup(lc);
		if (r < 0)
			goto bad;
	}
	if (lc->reason != LOOP_REASON_NONE) {
		char reason[48];

		loop_reason_format(lc, reason, sizeof(reason));
		if (lc->opts & LOOP_OPT_REQUIRE_BLOCK) {
			DMERR("%s: block mode required, not possible: %s",
			      lc->path, reason);
			ti->error = loop_require_block_errors[lc->reason];
			r = -EINVAL;
			goto bad;
		}
		lc->mode = LOOP_MODE_FILE;
		r = loop_file_setup(lc);
		if (r)
			goto bad;
		DMDEBUG("%s: file mode: %s", lc->path, reason);
	}

	lc->id = atomic_inc_return(&loop_next_id);
	lc->setup_ns = ktime_get_ns() - start_ns;
	loop_account(lc, 1);
	loop_debugfs_add(lc);
	return 0;

bad:
	loop_dtr(ti);
	return r;
}

static int loop_map(struct dm_target *ti, struct bio *bio)
{
	struct loop_c *lc = ti->private;

	if (unlikely(lc->read_only && op_is_write(bio_op(bio)) &&
		     !(op_is_flush(bio->bi_opf) && !bio_sectors(bio))))
		return DM_MAPIO_KILL;
	if (lc->mode == LOOP_MODE_BLOCK)
		return loop_block_map(ti, bio);
	return loop_file_map(ti, bio);
}

/*
 * Emit @str with a backslash before each character of @special: in the IMA
 * record, what keeps its "key=value," fields apart.
 */
static void loop_emit_escaped(char *result, unsigned int maxlen, size_t *psz,
			      const char *str, const char *special)
{
	size_t sz = *psz;

	for (; *str; str++) {
		if (strchr(special, *str))
			DMEMIT("\\");
		DMEMIT("%c", *str);
	}
	*psz = sz;
}

static void loop_status(struct dm_target *ti, status_type_t type,
			unsigned int status_flags, char *result, unsigned int maxlen)
{
	struct loop_c *lc = ti->private;
	unsigned int nr_opts = hweight32(lc->opts) + !!(lc->opts & LOOP_OPT_WORKERS);
	struct loop_stats st;
	char reason[48];
	size_t sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		loop_stats_sum(lc, &st);
		loop_reason_format(lc, reason, sizeof(reason));
		DMEMIT("%s %u %llu %llu %llu %llu %s", loop_mode_name(lc),
		       loop_nr_extents(lc), st.reads, st.writes, st.flushes,
		       st.splits, reason);
		break;

	case STATUSTYPE_TABLE:
		/*
		 * The path as given: libdevmapper escapes backslashes on the
		 * way in and dm_split_args() takes them off, so this is what
		 * `dmsetup reload` reads back as the same path.
		 */
		DMEMIT("%s %lld", lc->path, lc->offset);
		if (nr_opts) {
			DMEMIT(" %u", nr_opts);
			if (lc->opts & LOOP_OPT_REQUIRE_BLOCK)
				DMEMIT(" require_block");
			if (lc->opts & LOOP_OPT_FORCE_FILE)
				DMEMIT(" force_file");
			if (lc->opts & LOOP_OPT_NO_DIRECT_IO)
				DMEMIT(" no_direct_io");
			if (lc->opts & LOOP_OPT_WORKERS)
				DMEMIT(" workers %u", lc->nr_workers);
		}
		break;

	case STATUSTYPE_IMA:
		loop_reason_format(lc, reason, sizeof(reason));
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",file_name=");
		loop_emit_escaped(result, maxlen, &sz, lc->path, "\\,;=");
		DMEMIT(",offset=%lld,mode=%s,reason=%s,extents=%u;",
		       lc->offset, loop_mode_name(lc), reason, loop_nr_extents(lc));
		break;
	}
}

static int loop_message(struct dm_target *ti, unsigned int argc, char **argv,
			char *result, unsigned int maxlen)
{
	struct loop_c *lc = ti->private;

	if (argc == 1 && !strcasecmp(argv[0], "info")) {
		loop_format_info(lc, result, maxlen);
		return 1;
	}
	if (argc == 1 && !strcasecmp(argv[0], "reset_counters")) {
		loop_stats_reset(lc);
		return 0;
	}
	DMERR("Unrecognised message received: %s%s", argc ? argv[0] : "(none)",
	      argc > 1 ? " ..." : "");
	return -EINVAL;
}

/*
 * Report the host device so that dm stacks its queue limits and flush
 * support, without dm_get_device(): the mounted filesystem holds it
 * exclusively.  File mode reports nothing, which still gets io_hints called.
 */
static int loop_iterate_devices(struct dm_target *ti,
				iterate_devices_callout_fn fn, void *data)
{
	struct loop_c *lc = ti->private;

	if (lc->mode != LOOP_MODE_BLOCK)
		return 0;
	return fn(ti, &lc->host_dm_dev, 0, bdev_nr_sectors(lc->host_bdev), data);
}

/* File mode: the file's disk spins (as loop says: no disk, no spinning). */
static bool loop_file_rotational(struct loop_c *lc)
{
	struct block_device *bdev = loop_file_bdev(lc->file);

	return bdev && dmloop_bdev_rotational(bdev);
}

static void loop_resume(struct dm_target *ti)
{
	struct loop_c *lc = ti->private;

	if (lc->mode == LOOP_MODE_FILE)
		dmloop_file_queue_flags(dm_disk(lc->md)->queue, loop_file_rotational(lc));
}

/*
 * A sparse table loaded beside a live one (a reload) was walked while the
 * live one could still write into holes: before its first resume, with
 * the live one suspended, it takes the file's layout as it is now.  A
 * failure keeps the device suspended (and the next resume tries again).
 */
static int loop_preresume(struct dm_target *ti)
{
	struct loop_c *lc = ti->private;

	int r;

	if (lc->mode != LOOP_MODE_BLOCK || !lc->refresh)
		return 0;
	r = loop_sparse_refresh(lc);
	if (!r)
		lc->refresh = false;
	return r;
}

static void loop_io_hints(struct dm_target *ti, struct queue_limits *limits)
{
	struct loop_c *lc = ti->private;
	struct block_device *bdev;

	if (lc->mode == LOOP_MODE_BLOCK) {
		limits->logical_block_size =
			max_t(unsigned int, limits->logical_block_size,
			      bdev_logical_block_size(lc->host_bdev));
		limits->physical_block_size =
			max(limits->physical_block_size, limits->logical_block_size);
		limits->io_min = max(limits->io_min, lc->block_size);
		return;
	}
	/*
	 * Direct I/O needs its alignment; buffered I/O takes any sector.  A
	 * file on a block device keeps at least that device's logical block
	 * size, which block mode would have: a reload of the same table may
	 * change the mode, and the device's sector size must not change then.
	 */
	if (lc->use_dio)
		limits->logical_block_size = max_t(unsigned int, limits->logical_block_size,
						   lc->dio_align);
	bdev = loop_file_bdev(lc->file);
	if (bdev)
		limits->logical_block_size = max_t(unsigned int, limits->logical_block_size,
						   bdev_logical_block_size(bdev));
	dmloop_file_limits_features(limits, loop_file_rotational(lc));
	limits->physical_block_size = max(limits->physical_block_size,
					  limits->logical_block_size);
	limits->io_min = max(limits->io_min, lc->block_size);
	if (!lc->read_only)
		dmloop_set_discard_limits(limits, lc->block_size);
}

/*
 * NOWAIT: map() never sleeps in either mode (block mode remaps, file mode
 * queues to its workers), so REQ_NOWAIT bios are welcome.  Not
 * PASSES_CRYPTO: the flag is the target type's, and a file-mode table
 * reports no device to narrow the crypto profile, so dm would offer every
 * inline-encryption mode and file mode would write the data in the clear.
 */
static struct target_type loop_target = {
	.name		 = "loop",
	.version	 = {1, 1, 0},
	.features	 = DM_TARGET_NOWAIT,
	.module		 = THIS_MODULE,
	.ctr		 = loop_ctr,
	.dtr		 = loop_dtr,
	.map		 = loop_map,
	.status		 = loop_status,
	.message	 = loop_message,
	.preresume	 = loop_preresume,
	.resume		 = loop_resume,
	.iterate_devices = loop_iterate_devices,
	.io_hints	 = loop_io_hints,
};

static int __init dm_loop_init(void)
{
	int r;

	r = loop_file_init();
	if (r)
		return r;
	loop_debugfs_init();
	r = dm_register_target(&loop_target);
	if (r < 0) {
		DMERR("register failed %d", r);
		loop_debugfs_exit();
		loop_file_exit();
	}
	return r;
}

static void __exit dm_loop_exit(void)
{
	dm_unregister_target(&loop_target);
	loop_debugfs_exit();
	loop_file_exit();
	/* Tables replaced while the devices ran are freed after a grace period. */
	rcu_barrier();
}

module_init(dm_loop_init);
module_exit(dm_loop_exit);

MODULE_DESCRIPTION(DM_NAME " target mapping a regular file");
MODULE_AUTHOR("dm-loop developers");
MODULE_LICENSE("GPL");
MODULE_VERSION(DM_LOOP_VERSION);
MODULE_ALIAS("dm-loop");
