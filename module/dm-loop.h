/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-loop: a device-mapper target over a regular file.
 *
 * Block mode remaps bios straight to the host block device through a table
 * of extents read once from the filesystem's extent map; file mode does the
 * I/O through the VFS in workers.  See dm-loop.rst for the user's view.
 */
#ifndef DM_LOOP_H
#define DM_LOOP_H

#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/bits.h>
#include <linux/device-mapper.h>
#include <linux/fs.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#define DM_MSG_PREFIX "loop"
#define DM_LOOP_VERSION "1.1.0"

enum loop_mode {
	LOOP_MODE_BLOCK,
	LOOP_MODE_FILE,
};

/* Why a device is in file mode; see loop_reason_names[] for the tokens. */
enum loop_reason {
	LOOP_REASON_NONE,
	LOOP_REASON_FORCED,
	LOOP_REASON_NO_BDEV,
	LOOP_REASON_NO_BMAP,
	LOOP_REASON_FS_NOT_ALLOWED,
	LOOP_REASON_ENCRYPTED,
	LOOP_REASON_DAX,
	LOOP_REASON_UNALIGNED_OFFSET,
	LOOP_REASON_UNMAPPED,
	LOOP_REASON_IN_USE,
	LOOP_REASON_NO_DIO,
	LOOP_REASON_VERITY,
	LOOP_REASON_MMAPPED,
	LOOP_REASON_CACHE_BUSY,
	LOOP_REASON_FROZEN,
	LOOP_REASON_CHANGED,
	/* From HOLE to BMAP_MISMATCH: found by the FIEMAP walk at lc->unmapped_block. */
	LOOP_REASON_HOLE,
	LOOP_REASON_UNWRITTEN,
	LOOP_REASON_SHARED,
	LOOP_REASON_DELALLOC,
	LOOP_REASON_INLINE,
	LOOP_REASON_TAIL,
	LOOP_REASON_ENCRYPTED_EXTENT,
	LOOP_REASON_ENCODED,
	LOOP_REASON_NOT_ALIGNED,
	LOOP_REASON_UNKNOWN,
	LOOP_REASON_BMAP_MISMATCH,
	LOOP_REASON_MAX,
};

/* Which walk read the file's layout (debugfs info's "walk:"). */
enum loop_walk {
	LOOP_WALK_NONE,
	LOOP_WALK_FIEMAP,
	LOOP_WALK_BMAP,
	LOOP_WALK_MAP_BLOCKS,	/* XFS's map_blocks(): dm-loop-sparse.c */
};

/* Optional table arguments. */
#define LOOP_OPT_REQUIRE_BLOCK	BIT(0)
#define LOOP_OPT_FORCE_FILE	BIT(1)
#define LOOP_OPT_NO_DIRECT_IO	BIT(2)
#define LOOP_OPT_WORKERS	BIT(3)	/* "workers <n>": two words */

/* How deep dm-loop devices may stack: loop_check_stack() refuses more. */
#define LOOP_MAX_STACK		16

/* File mode's workers per device: the default and the most a table may ask. */
#define LOOP_DEFAULT_WORKERS	4
#define LOOP_MAX_WORKERS	64

/*
 * One run of contiguous sectors: device sectors are target-relative.  The
 * top bits of host_sector say what the filesystem has there (a sparse
 * table, see dm-loop-sparse.c): unwritten blocks at the host sector below
 * them, or a hole (no host sector).  No host device has 2^61 sectors.
 */
struct loop_extent {
	sector_t dev_sector;
	sector_t host_sector;
	sector_t len;
};

#define LOOP_EXT_UNWRITTEN	BIT_ULL(62)
#define LOOP_EXT_HOLE		BIT_ULL(63)
#define LOOP_EXT_STATE		(LOOP_EXT_UNWRITTEN | LOOP_EXT_HOLE)

static inline bool loop_ext_written(const struct loop_extent *e)
{
	return !(e->host_sector & LOOP_EXT_STATE);
}

static inline sector_t loop_ext_host(const struct loop_extent *e)
{
	return e->host_sector & ~LOOP_EXT_STATE;
}

/*
 * A run of a table's extents (dm-loop-table.c): at most a page, never
 * changed once a table has it.  @dead chains the segments a retired table
 * frees; @embedded: allocated with its table.
 */
struct loop_seg {
	struct loop_seg *dead;
	unsigned int nr;
	unsigned int embedded;
	struct loop_extent v[];
};

/*
 * A block-mode table: an index of segments, replaced under RCU when a
 * sparse table's ranges are allocated or written (lc->alloc_lock), read by
 * map() under rcu_read_lock() only.  @nr counts the extents, @holes and
 * @unwritten those in such a state.
 */
struct loop_table {
	struct rcu_head rcu;
	struct loop_seg *dead;
	unsigned int nr;
	unsigned int holes;
	unsigned int unwritten;
	unsigned int nseg;
	struct loop_seg *seg[];
};

struct loop_stats {
	u64 reads;
	u64 writes;
	u64 flushes;
	u64 discards;
	u64 splits;
	u64 direct_ios;
	u64 buffered_ios;
	u64 errors;
};

struct loop_c {
	struct dm_target *ti;
	struct mapped_device *md;
	struct file *file;
	char *path;
	loff_t offset;
	unsigned int opts;
	bool read_only;

	enum loop_mode mode;
	enum loop_reason reason;
	u64 unmapped_block;		/* the file block the reason names */
	enum loop_walk walk;
	unsigned int block_size;	/* filesystem block size */
	dev_t host_dev;			/* st_dev of the file */

	/* block mode */
	struct block_device *host_bdev;
	struct dm_dev host_dm_dev;	/* for iterate_devices, never dm_get_device */
	struct loop_table __rcu *table;
	bool pinned;
	/* sparse: holes and unwritten ranges allowed (XFS, dm-loop-sparse.c) */
	bool sparse;
	bool refresh;			/* loaded beside a live table: see preresume */
	struct mutex alloc_lock;	/* the one writer of a sparse table */
	sector_t alloc_next;		/* where the last allocation ended */
	sector_t alloc_chunk;		/* and its chunk, in sectors */
	struct work_struct sparse_work;	/* writes into holes and unwritten */
	struct bio_set *bs;		/* the worker's clones */

	/* file mode */
	bool file_user;
	bool use_dio;
	unsigned int dio_align;
	spinlock_t lock;		/* inflight, pending and the workers' busy */
	/* (a sparse block-mode table's worker uses pending too) */
	unsigned int inflight;		/* bios not yet fully ended */
	wait_queue_head_t drain;	/* the destructor waits for inflight 0 */
	struct bio_list pending;	/* for the workers, oldest first */
	unsigned int nr_workers;	/* "workers <n>", else the default */
	unsigned int nr_busy;		/* workers queued or running */
	unsigned int nr_sync;		/* of them, inside a synchronous I/O */
	struct loop_worker *workers;	/* nr_workers of them, file mode only */

	struct list_head stack_node;	/* loop_contexts, for loop_check_stack */
	struct list_head pin_node;	/* the pinned file's targets */
	unsigned int depth;		/* see loop_check_stack() */
	const struct gendisk *file_disk; /* the file's filesystem's disk, or NULL */
	bool file_on_dm;		/* ... a device-mapper disk */

	u64 setup_ns;
	struct loop_stats __percpu *stats;
	unsigned int id;
	struct dentry *debugfs_dir;
};

/*
 * One of a file-mode device's workers: a work item on the workqueue of its depth
 * (loop_file_wq[]), not a thread.  @busy (under lc->lock): queued or running, and
 * counted in lc->nr_busy.
 */
struct loop_worker {
	struct work_struct work;
	struct loop_c *lc;
	bool busy;
};

/*
 * Per-bio data of file mode: its device, and for direct I/O the kiocb it is
 * submitted with (asynchronously, as loop's lo_rw_aio).
 * @ref: the submitting worker and the completion each hold one.
 * @requeued: a short asynchronous read handed back to the worker, which
 *	judges @ret (loop_rw_status()) in process context.
 * @empty_reads: see loop_rw_status().
 */
struct loop_io {
	struct loop_c *lc;
	struct kiocb iocb;
	atomic_t ref;
	long ret;
	bool requeued;
	u8 empty_reads;
};

#define loop_stat_inc(lc, field) this_cpu_inc((lc)->stats->field)

void loop_stats_sum(struct loop_c *lc, struct loop_stats *sum);
const char *loop_mode_name(struct loop_c *lc);
int loop_reason_format(struct loop_c *lc, char *buf, size_t size);
size_t loop_table_bytes(struct loop_c *lc);

/* dm-loop-block.c */
int loop_block_setup(struct loop_c *lc);
void loop_block_teardown(struct loop_c *lc);
int loop_block_map(struct dm_target *ti, struct bio *bio);
unsigned int loop_nr_extents(struct loop_c *lc);
void loop_table_account(struct loop_table *old, struct loop_table *new);

/* dm-loop-sparse.c: holes and unwritten ranges of an XFS file, in block mode. */
bool loop_sparse_possible(struct loop_c *lc);
int loop_sparse_probe(struct loop_c *lc);
int loop_sparse_map(struct loop_c *lc, struct bio *bio);
void loop_sparse_work(struct work_struct *work);
void loop_sparse_teardown(struct loop_c *lc);
int loop_sparse_setup(struct loop_c *lc);
int loop_sparse_walk(struct loop_c *lc, struct loop_table **tp);
int loop_sparse_refresh(struct loop_c *lc);

/* dm-loop-table.c */
struct loop_table *loop_table_build(const struct loop_extent *v, unsigned int nr);
void loop_table_free(struct loop_table *t);
void loop_table_retire(struct loop_table *t, bool all);
const struct loop_extent *loop_find_extent(const struct loop_table *t, sector_t sector);
struct loop_table *loop_table_apply(struct loop_table *old, sector_t start, sector_t len,
				    sector_t host);

/* dm-loop-file.c */
int loop_file_setup(struct loop_c *lc);
void loop_file_teardown(struct loop_c *lc);
int loop_file_map(struct dm_target *ti, struct bio *bio);
void loop_file_work(struct work_struct *work);
void loop_queue_work(struct loop_c *lc, struct work_struct *work);
int loop_file_init(void);
void loop_file_exit(void);

/* dm-loop-registry.c: backing inodes, shared by both modes, and the stack. */
int loop_inode_probe(struct loop_c *lc);
int loop_inode_pin(struct loop_c *lc);
void loop_inode_unpin(struct loop_c *lc);
int loop_inode_use(struct loop_c *lc);
void loop_inode_unuse(struct loop_c *lc);
int loop_check_stack(struct loop_c *lc);
int loop_inode_check_sparse(struct loop_c *lc);
void loop_uncheck_stack(struct loop_c *lc);

/* The disk of the file's filesystem: the real inode's, under overlayfs. */
static inline struct block_device *loop_file_bdev(struct file *file)
{
	return d_real_inode(file->f_path.dentry)->i_sb->s_bdev;
}

/* dm-loop-file.c: debug-only fault injection, 0 in a normal build. */
#ifdef DMLOOP_DEBUG
extern unsigned int loop_debug_endio_delay_ms;
#else
#define loop_debug_endio_delay_ms 0U
#endif

/* dm-loop-debugfs.c */
void loop_debugfs_init(void);
void loop_debugfs_exit(void);
void loop_debugfs_add(struct loop_c *lc);
void loop_debugfs_remove(struct loop_c *lc);
size_t loop_format_info(struct loop_c *lc, char *buf, size_t size);

#endif /* DM_LOOP_H */
