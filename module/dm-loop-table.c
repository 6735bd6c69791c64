// SPDX-License-Identifier: GPL-2.0
/*
 * dm-loop's extent table: the extents in segments of at most a page, and
 * an index of the segments.
 *
 * map() finds an extent with two binary searches under rcu_read_lock().
 * A sparse table changes as its holes and unwritten ranges are written
 * (dm-loop-sparse.c): the change builds new segments for the one or few
 * it touches and a new index that shares every other segment with the
 * live one, and the new index replaces the live one under RCU.  A change
 * costs a page of extents and a pointer per segment, never a copy of the
 * whole table: a file written at random into preallocated space splits
 * into millions of extents.
 *
 * A table of one segment (most tables) is one allocation: the segment
 * follows the index.  Every change to such a table replaces its one
 * segment, so no later table shares it.
 */
#include <linux/slab.h>

#include "dm-loop.h"

/* What one segment holds: a page with its header. */
#define LOOP_SEG_MAX	((PAGE_SIZE - sizeof(struct loop_seg)) / sizeof(struct loop_extent))

static struct loop_seg *loop_seg_alloc(unsigned int nr)
{
	struct loop_seg *s = kmalloc(struct_size(s, v, nr), GFP_NOIO);

	if (s) {
		s->dead = NULL;
		s->nr = nr;
		s->embedded = 0;
	}
	return s;
}

static void loop_seg_count(const struct loop_seg *s, unsigned int *holes,
			   unsigned int *unwritten)
{
	unsigned int i;

	for (i = 0; i < s->nr; i++) {
		*holes += !!(s->v[i].host_sector & LOOP_EXT_HOLE);
		*unwritten += !!(s->v[i].host_sector & LOOP_EXT_UNWRITTEN);
	}
}

static void loop_table_free_segs(struct loop_table *t, unsigned int from, unsigned int to)
{
	unsigned int i;

	for (i = from; i < to; i++)
		if (!t->seg[i]->embedded)
			kfree(t->seg[i]);
}

/* A table of @nr extents (@nr >= 1) copied from @v, or NULL. */
struct loop_table *loop_table_build(const struct loop_extent *v, unsigned int nr)
{
	unsigned int nseg = DIV_ROUND_UP(nr, LOOP_SEG_MAX), i;
	struct loop_table *t;
	struct loop_seg *s;

	if (nseg == 1) {
		t = kvmalloc(struct_size(t, seg, 1) + struct_size(s, v, nr), GFP_NOIO);
		if (!t)
			return NULL;
		s = (struct loop_seg *)&t->seg[1];
		s->dead = NULL;
		s->nr = nr;
		s->embedded = 1;
		t->seg[0] = s;
	} else {
		t = kvmalloc(struct_size(t, seg, nseg), GFP_NOIO);
		if (!t)
			return NULL;
		for (i = 0; i < nseg; i++) {
			t->seg[i] = loop_seg_alloc(min_t(unsigned int, LOOP_SEG_MAX,
							 nr - i * LOOP_SEG_MAX));
			if (!t->seg[i]) {
				loop_table_free_segs(t, 0, i);
				kvfree(t);
				return NULL;
			}
		}
	}
	t->dead = NULL;
	t->nr = nr;
	t->nseg = nseg;
	t->holes = 0;
	t->unwritten = 0;
	for (i = 0; i < nseg; i++) {
		s = t->seg[i];
		memcpy(s->v, v + i * LOOP_SEG_MAX, s->nr * sizeof(*v));
		loop_seg_count(s, &t->holes, &t->unwritten);
	}
	return t;
}

/* Free @t and every segment it has; no one may read it. */
void loop_table_free(struct loop_table *t)
{
	if (!t)
		return;
	loop_table_free_segs(t, 0, t->nseg);
	kvfree(t);
}

/* After a grace period: @t's index and the segments no newer table has. */
static void loop_table_free_rcu(struct rcu_head *rcu)
{
	struct loop_table *t = container_of(rcu, struct loop_table, rcu);
	struct loop_seg *s, *next;

	for (s = t->dead; s; s = next) {
		next = s->dead;
		kfree(s);
	}
	kvfree(t);
}

/*
 * @t is no longer live: free it once no reader can have it.  @all: no
 * newer table shares any of its segments (a table read afresh); else it
 * frees only what loop_table_apply() left on its list.
 */
void loop_table_retire(struct loop_table *t, bool all)
{
	unsigned int i;

	for (i = 0; all && i < t->nseg; i++) {
		if (!t->seg[i]->embedded) {
			t->seg[i]->dead = t->dead;
			t->dead = t->seg[i];
		}
	}
	call_rcu(&t->rcu, loop_table_free_rcu);
}

/* The segment holding @sector, or the last one if the table ends before. */
static unsigned int loop_seg_index(const struct loop_table *t, sector_t sector)
{
	unsigned int lo = 0, hi = t->nseg;

	while (hi - lo > 1) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (t->seg[mid]->v[0].dev_sector <= sector)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* The extent holding a target-relative sector; the table covers them all. */
const struct loop_extent *loop_find_extent(const struct loop_table *t, sector_t sector)
{
	const struct loop_seg *s = t->seg[loop_seg_index(t, sector)];
	unsigned int lo = 0, hi = s->nr;

	while (hi - lo > 1) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (s->v[mid].dev_sector <= sector)
			lo = mid;
		else
			hi = mid;
	}
	return &s->v[lo];
}

/* Append @x to @v[*@nr], merging what the filesystem would call one extent. */
static void loop_extent_push(struct loop_extent *v, unsigned int *nr, struct loop_extent x)
{
	struct loop_extent *o = *nr ? &v[*nr - 1] : NULL;

	if (o && (o->host_sector & LOOP_EXT_STATE) == (x.host_sector & LOOP_EXT_STATE) &&
	    (o->host_sector & LOOP_EXT_HOLE || o->host_sector + o->len == x.host_sector)) {
		o->len += x.len;
		return;
	}
	v[(*nr)++] = x;
}

/*
 * A new table where device sectors [@start, @start + @len) have the state
 * and host sectors of @host (LOOP_EXT_* bits included; a hole's host is
 * LOOP_EXT_HOLE alone), or NULL.  It shares every segment of @old but the
 * ones that hold the range or border it (so that extents on either side
 * can merge): those are rebuilt, and put on @old's list of segments that
 * loop_table_retire(@old, false) frees.  On NULL, @old is unchanged.
 */
struct loop_table *loop_table_apply(struct loop_table *old, sector_t start, sector_t len,
				    sector_t host)
{
	sector_t end = start + len;
	unsigned int first = loop_seg_index(old, start ? start - 1 : 0);
	unsigned int last = loop_seg_index(old, end);
	unsigned int i, j, n = 0, cnt = 0, m, nseg, holes = 0, unwritten = 0;
	struct loop_extent *v;
	struct loop_table *t;

	for (i = first; i <= last; i++)
		cnt += old->seg[i]->nr;
	v = kvmalloc_array(cnt + 2, sizeof(*v), GFP_NOIO);
	if (!v)
		return NULL;
	for (i = first; i <= last; i++) {
		const struct loop_seg *s = old->seg[i];

		loop_seg_count(s, &holes, &unwritten);
		for (j = 0; j < s->nr; j++) {
			const struct loop_extent *e = &s->v[j];
			sector_t e_end = e->dev_sector + e->len;

			if (e_end <= start || e->dev_sector >= end) {
				loop_extent_push(v, &n, *e);
				continue;
			}
			if (e->dev_sector < start)
				loop_extent_push(v, &n, (struct loop_extent){
					e->dev_sector, e->host_sector, start - e->dev_sector });
			if (e->dev_sector <= start)
				loop_extent_push(v, &n, (struct loop_extent){ start, host, len });
			if (e_end > end) {
				struct loop_extent x = { end, e->host_sector, e_end - end };

				if (!(x.host_sector & LOOP_EXT_HOLE))
					x.host_sector += end - e->dev_sector;
				loop_extent_push(v, &n, x);
			}
		}
	}

	/* The rebuilt extents in m segments of about the same size. */
	m = DIV_ROUND_UP(n, LOOP_SEG_MAX);
	nseg = old->nseg - (last - first + 1) + m;
	t = kvmalloc(struct_size(t, seg, nseg), GFP_NOIO);
	if (!t)
		goto nomem;
	for (i = 0, j = 0; i < m; i++) {
		unsigned int k = (n - j) / (m - i);
		struct loop_seg *s = loop_seg_alloc(k);

		if (!s) {
			while (i--)
				kfree(t->seg[first + i]);
			kvfree(t);
			goto nomem;
		}
		memcpy(s->v, v + j, k * sizeof(*v));
		t->seg[first + i] = s;
		j += k;
	}
	memcpy(t->seg, old->seg, first * sizeof(t->seg[0]));
	memcpy(t->seg + first + m, old->seg + last + 1,
	       (old->nseg - last - 1) * sizeof(t->seg[0]));
	t->dead = NULL;
	t->nseg = nseg;
	t->nr = old->nr - cnt + n;
	t->holes = old->holes - holes;
	t->unwritten = old->unwritten - unwritten;
	for (i = 0; i < m; i++)
		loop_seg_count(t->seg[first + i], &t->holes, &t->unwritten);
	kvfree(v);

	for (i = first; i <= last; i++) {
		if (!old->seg[i]->embedded) {
			old->seg[i]->dead = old->dead;
			old->dead = old->seg[i];
		}
	}
	return t;
nomem:
	kvfree(v);
	return NULL;
}
