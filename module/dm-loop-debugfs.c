// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop in debugfs: one directory per target instance,
 * /sys/kernel/debug/dm-loop/dm-<minor>-<start>-<id>/, holding the extent
 * table, the device's figures, and its current name and number.  The
 * formats are documented in dm-loop.rst and are a stable interface.
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>

#include "dm-loop.h"

static struct dentry *loop_debugfs_root;

/*
 * One read of the table: the one live when the read began, under RCU (a
 * sparse table is replaced as its ranges are written; a read() that
 * spans such a change may show part of each).
 */
struct loop_extents_iter {
	struct loop_c *lc;
	const struct loop_table *t;
	unsigned int idx;		/* the extent's index in the table */
	unsigned int s;			/* its segment */
	int i;				/* and its place there */
};

/* The iterator at extent @idx of it->t, or NULL past the end. */
static void *loop_extents_seek(struct loop_extents_iter *it, loff_t idx)
{
	const struct loop_table *t = it->t;
	unsigned int s;

	if (!t || idx >= t->nr)
		return NULL;
	it->idx = idx;
	for (s = 0; idx >= t->seg[s]->nr; s++)
		idx -= t->seg[s]->nr;
	it->s = s;
	it->i = idx;
	return (void *)&t->seg[s]->v[idx];
}

static void *loop_extents_start(struct seq_file *m, loff_t *pos)
	__acquires(RCU)
{
	struct loop_extents_iter *it = m->private;

	rcu_read_lock();
	it->t = rcu_dereference(it->lc->table);
	if (*pos == 0)
		return SEQ_START_TOKEN;
	return loop_extents_seek(it, *pos - 1);
}

static void *loop_extents_next(struct seq_file *m, void *v, loff_t *pos)
{
	struct loop_extents_iter *it = m->private;

	++*pos;
	if (*pos == 1 || !it->t || *pos > it->t->nr)
		return loop_extents_seek(it, *pos - 1);
	/* The next extent: in this segment, or first of the next one. */
	it->idx++;
	if (++it->i == it->t->seg[it->s]->nr) {
		it->s++;
		it->i = 0;
	}
	return (void *)&it->t->seg[it->s]->v[it->i];
}

static void loop_extents_stop(struct seq_file *m, void *v)
	__releases(RCU)
{
	rcu_read_unlock();
}

static const char *loop_extent_state(const struct loop_extent *e)
{
	if (e->host_sector & LOOP_EXT_HOLE)
		return "hole";
	return e->host_sector & LOOP_EXT_UNWRITTEN ? "unwritten" : "written";
}

/*
 * v1: a table of written extents.  v2, for a sparse file's table: a fifth
 * column says written, unwritten or hole (whose host_sector is 0).
 */
static int loop_extents_show(struct seq_file *m, void *v)
{
	struct loop_extents_iter *it = m->private;
	struct loop_c *lc = it->lc;
	const struct loop_extent *e = v;

	if (v == SEQ_START_TOKEN) {
		seq_printf(m, "# dm-loop extents v%d\n# host %u:%u extents %u\n"
			   "# index dev_sector sectors host_sector%s\n",
			   lc->sparse ? 2 : 1, MAJOR(lc->host_dev), MINOR(lc->host_dev),
			   it->t ? it->t->nr : 0, lc->sparse ? " state" : "");
		return 0;
	}
	seq_printf(m, "%u %llu %llu %llu", it->idx,
		   (unsigned long long)e->dev_sector, (unsigned long long)e->len,
		   (unsigned long long)loop_ext_host(e));
	if (lc->sparse)
		seq_printf(m, " %s", loop_extent_state(e));
	seq_putc(m, '\n');
	return 0;
}

static const struct seq_operations loop_extents_sops = {
	.start	= loop_extents_start,
	.next	= loop_extents_next,
	.stop	= loop_extents_stop,
	.show	= loop_extents_show,
};

static int loop_extents_open(struct inode *inode, struct file *file)
{
	struct loop_extents_iter *it;

	it = __seq_open_private(file, &loop_extents_sops, sizeof(*it));
	if (!it)
		return -ENOMEM;
	it->lc = inode->i_private;
	return 0;
}

static const struct file_operations loop_extents_fops = {
	.owner		= THIS_MODULE,
	.open		= loop_extents_open,
	.read		= seq_read,
	.llseek		= seq_lseek,
	.release	= seq_release_private,
};

static int loop_info_show(struct seq_file *m, void *v)
{
	struct loop_c *lc = m->private;
	size_t size = PATH_MAX + 1024;
	char *buf = kmalloc(size, GFP_KERNEL);

	if (!buf)
		return -ENOMEM;
	loop_format_info(lc, buf, size);
	seq_puts(m, buf);
	kfree(buf);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(loop_info);

/*
 * The name lives in dm-ioctl's hash cell (dm_device_name() is "major:minor"):
 * copy it at read time, so that a rename shows at once.  ENXIO once the
 * device has left the hash on its way out.
 */
static int loop_name_show(struct seq_file *m, void *v)
{
	struct loop_c *lc = m->private;
	char name[DM_NAME_LEN];
	int r = dm_copy_name_and_uuid(lc->md, name, NULL);

	if (r)
		return r;
	seq_printf(m, "%s\n", name);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(loop_name);

static int loop_dev_show(struct seq_file *m, void *v)
{
	struct loop_c *lc = m->private;
	dev_t devt = disk_devt(dm_disk(lc->md));

	seq_printf(m, "%u:%u\n", MAJOR(devt), MINOR(devt));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(loop_dev);

void loop_debugfs_add(struct loop_c *lc)
{
	char name[64];

	if (IS_ERR_OR_NULL(loop_debugfs_root))
		return;
	snprintf(name, sizeof(name), "dm-%u-%llu-%u",
		 MINOR(disk_devt(dm_disk(lc->md))),
		 (unsigned long long)lc->ti->begin, lc->id);
	lc->debugfs_dir = debugfs_create_dir(name, loop_debugfs_root);
	debugfs_create_file("extents", 0444, lc->debugfs_dir, lc, &loop_extents_fops);
	debugfs_create_file("info", 0444, lc->debugfs_dir, lc, &loop_info_fops);
	debugfs_create_file("name", 0444, lc->debugfs_dir, lc, &loop_name_fops);
	debugfs_create_file("dev", 0444, lc->debugfs_dir, lc, &loop_dev_fops);
}

/* debugfs_remove() waits for readers still inside our files. */
void loop_debugfs_remove(struct loop_c *lc)
{
	debugfs_remove(lc->debugfs_dir);
	lc->debugfs_dir = NULL;
}

void loop_debugfs_init(void)
{
	loop_debugfs_root = debugfs_create_dir("dm-loop", NULL);
}

void loop_debugfs_exit(void)
{
	debugfs_remove(loop_debugfs_root);
}
