// SPDX-License-Identifier: GPL-2.0
/*
 * layout.c -- extent lists as byte ranges, and their comparison.
 *
 * The comparison is over covered bytes, not extent boundaries: ext4 cuts
 * extents at 32768 blocks and dm-loop merges contiguous runs, so the same
 * layout has many extent lists. Both sides are walked together, one
 * elementary range at a time, where neither side changes.
 */
#include <inttypes.h>
#include <linux/fiemap.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "util.h"

void layout_init(struct layout *l)
{
	memset(l, 0, sizeof(*l));
}

void layout_free(struct layout *l)
{
	free(l->ext);
	memset(l, 0, sizeof(*l));
}

void layout_add(struct layout *l, uint64_t file_off, uint64_t len,
		uint64_t host_off, uint32_t flags)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->ext = xrealloc_array(l->ext, l->cap, sizeof(*l->ext));
	}
	l->ext[l->n++] = (struct extent){
		.file_off = file_off,
		.len = len,
		.host_off = host_off,
		.flags = flags,
	};
}

static int extent_cmp(const void *a, const void *b)
{
	const struct extent *x = a, *y = b;

	if (x->file_off != y->file_off)
		return x->file_off < y->file_off ? -1 : 1;
	return 0;
}

bool extent_mappable(uint32_t flags)
{
	return !(flags & ~LAYOUT_BENIGN_FLAGS);
}

int layout_normalise(struct layout *l, const char *what)
{
	size_t i, out = 0;

	if (l->n > 1)
		qsort(l->ext, l->n, sizeof(*l->ext), extent_cmp);
	for (i = 0; i < l->n; i++) {
		struct extent *e = &l->ext[i];

		if (e->len == 0)
			continue;
		if (out > 0) {
			struct extent *p = &l->ext[out - 1];
			uint64_t pend = p->file_off + p->len;

			if (e->file_off < pend) {
				error("%s: extents overlap at file offset %" PRIu64,
				      what, e->file_off);
				return -1;
			}
			/* The unmappable keep their own flags, to name them. */
			if (e->file_off == pend &&
			    e->host_off == p->host_off + p->len &&
			    extent_mappable(e->flags) &&
			    extent_mappable(p->flags)) {
				p->len += e->len;
				continue;
			}
		}
		l->ext[out] = *e;
		l->ext[out].flags &= ~LAYOUT_BENIGN_FLAGS;
		out++;
	}
	l->n = out;
	return 0;
}

static const struct {
	uint32_t mask;
	const char *name;
} flag_names[] = {
	/* filefrag's names and order, so listings can be diffed. */
	{ FIEMAP_EXTENT_LAST,		"last" },
	{ FIEMAP_EXTENT_UNKNOWN,	"unknown_loc" },
	{ FIEMAP_EXTENT_DELALLOC,	"delalloc" },
	{ FIEMAP_EXTENT_ENCODED,	"encoded" },
	{ FIEMAP_EXTENT_DATA_ENCRYPTED,	"encrypted" },
	{ FIEMAP_EXTENT_NOT_ALIGNED,	"not_aligned" },
	{ FIEMAP_EXTENT_DATA_INLINE,	"inline" },
	{ FIEMAP_EXTENT_DATA_TAIL,	"tail_packed" },
	{ FIEMAP_EXTENT_UNWRITTEN,	"unwritten" },
	{ FIEMAP_EXTENT_MERGED,		"merged" },
	{ FIEMAP_EXTENT_SHARED,		"shared" },
	{ LAYOUT_EXTENT_HOLE,		"hole" },
};

uint32_t flag_by_name(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (!strcmp(name, flag_names[i].name))
			return flag_names[i].mask;
	return 0;
}

const char *flags_name(uint32_t flags, char *buf, size_t size)
{
	size_t i, len = 0;
	uint32_t mask;

	buf[0] = '\0';
	for (i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++) {
		if (!(flags & flag_names[i].mask))
			continue;
		len += (size_t)snprintf(buf + len, len < size ? size - len : 0,
					"%s%s", len ? "," : "",
					flag_names[i].name);
		flags &= ~flag_names[i].mask;
	}
	/* Unknown bits in hex, as filefrag prints them. */
	for (mask = 1; flags; mask <<= 1) {
		if (!(flags & mask))
			continue;
		len += (size_t)snprintf(buf + len, len < size ? size - len : 0,
					"%s%#04x", len ? "," : "", mask);
		flags &= ~mask;
	}
	return buf;
}

const char *difference_kind_name(enum difference_kind k)
{
	switch (k) {
	case DIFF_MISSING:
		return "missing";
	case DIFF_EXTRA:
		return "extra";
	case DIFF_SHIFTED:
		return "shifted";
	case DIFF_UNMAPPABLE:
		return "unmappable";
	case DIFF_UNMAPPED:
		return "unmapped";
	case DIFF_STATE:
		return "state";
	}
	return "?";
}

const char *difference_kernel_state(const struct difference *d)
{
	if (!d->kernel_states || !d->kernel_listed)
		return NULL;
	if (d->kernel_flags & LAYOUT_EXTENT_HOLE)
		return "hole";
	return d->kernel_flags & FIEMAP_EXTENT_UNWRITTEN ? "unwritten" : "written";
}

const char *difference_file_state(const struct difference *d)
{
	if (!d->file_mapped)
		return "hole";
	return d->file_flags & FIEMAP_EXTENT_UNWRITTEN ? "unwritten" : "written";
}

/* What the file has in d's range: "the kernel knows ..., <this>". */
static char *file_has(const struct difference *d)
{
	char flags[128];

	if (!d->file_mapped)
		return xstrdup("the file has no extent there (hole or past EOF)");
	if (d->file_flags & ~FIEMAP_EXTENT_UNWRITTEN)
		return xasprintf("the file's extent is %s",
				 flags_name(d->file_flags, flags, sizeof(flags)));
	if (d->file_flags & FIEMAP_EXTENT_UNWRITTEN)
		return xstrdup("the file has unwritten blocks there");
	return xstrdup("the file has written data there");
}

char *difference_note(const struct difference *d)
{
	char flags[128];

	switch (d->kind) {
	case DIFF_MISSING:
		if (d->file_mapped && !extent_mappable(d->file_flags))
			return xasprintf("kernel table has a gap; the file's extent is %s",
					 flags_name(d->file_flags, flags, sizeof(flags)));
		return xasprintf("the kernel table does not map file data");
	case DIFF_EXTRA:
		return xasprintf("the kernel maps a range where the file has no extent (hole or past EOF)");
	case DIFF_SHIFTED:
		if ((d->kernel_flags & FIEMAP_EXTENT_UNWRITTEN) &&
		    d->kernel_host > d->file_host)
			return xasprintf("the kernel's unwritten blocks are %" PRIu64
					 " bytes past the file's",
					 d->kernel_host - d->file_host);
		if (d->kernel_flags & FIEMAP_EXTENT_UNWRITTEN)
			return xasprintf("the kernel's unwritten blocks are %" PRIu64
					 " bytes before the file's",
					 d->file_host - d->kernel_host);
		if (d->kernel_host > d->file_host)
			return xasprintf("the kernel maps %" PRIu64 " bytes past the file's data",
					 d->kernel_host - d->file_host);
		return xasprintf("the kernel maps %" PRIu64 " bytes before the file's data",
				 d->file_host - d->kernel_host);
	case DIFF_UNMAPPABLE:
		/* A v2 table may know a range as unwritten: name the rest. */
		return xasprintf("the kernel maps an extent that is %s: block mode must not",
				 flags_name(d->kernel_states ?
					    d->file_flags & ~FIEMAP_EXTENT_UNWRITTEN :
					    d->file_flags, flags, sizeof(flags)));
	case DIFF_UNMAPPED:
		return xasprintf("neither maps this range: a hole inside a block-mode device");
	case DIFF_STATE: {
		char *has = file_has(d), *note;

		note = xasprintf("the kernel knows this range as %s, %s",
				 d->kernel_flags & LAYOUT_EXTENT_HOLE ? "a hole" :
				 d->kernel_flags & FIEMAP_EXTENT_UNWRITTEN ?
				 "unwritten" : "written", has);
		free(has);
		return note;
	}
	}
	return xstrdup("?");
}

/* The extent of l containing x, moving *i forward; NULL if none. */
static const struct extent *extent_at(const struct layout *l, size_t *i,
				      uint64_t x, uint64_t *next)
{
	while (*i < l->n && l->ext[*i].file_off + l->ext[*i].len <= x)
		(*i)++;
	if (*i == l->n)
		return NULL;
	if (l->ext[*i].file_off <= x) {
		uint64_t end = l->ext[*i].file_off + l->ext[*i].len;

		if (end < *next)
			*next = end;
		return &l->ext[*i];
	}
	if (l->ext[*i].file_off < *next)
		*next = l->ext[*i].file_off;
	return NULL;
}

static void add_difference(struct comparison *cmp, const struct difference *d)
{
	struct difference *p = cmp->n ? &cmp->diff[cmp->n - 1] : NULL;

	/* One report for a run that continues the previous one. */
	if (p && p->kind == d->kind && p->file_off + p->len == d->file_off &&
	    p->kernel_listed == d->kernel_listed &&
	    p->kernel_flags == d->kernel_flags &&
	    p->kernel_mapped == d->kernel_mapped &&
	    p->file_mapped == d->file_mapped &&
	    p->file_flags == d->file_flags &&
	    (!p->kernel_mapped || p->kernel_host + p->len == d->kernel_host) &&
	    (!p->file_mapped || p->file_host + p->len == d->file_host)) {
		p->len += d->len;
		return;
	}
	if (cmp->n == cmp->cap) {
		cmp->cap = cmp->cap ? cmp->cap * 2 : 8;
		cmp->diff = xrealloc_array(cmp->diff, cmp->cap,
					   sizeof(*cmp->diff));
	}
	cmp->diff[cmp->n++] = *d;
}

static size_t count_meeting(const struct layout *l, uint64_t start,
			    uint64_t end)
{
	size_t i, n = 0;

	for (i = 0; i < l->n; i++)
		if (l->ext[i].file_off < end &&
		    l->ext[i].file_off + l->ext[i].len > start)
			n++;
	return n;
}

/* v1: every range of the kernel's table is written data. */
static bool differs_v1(const struct extent *k, const struct extent *f,
		       struct difference *d)
{
	if (k && f && !extent_mappable(f->flags))
		d->kind = DIFF_UNMAPPABLE;
	else if (k && f && d->kernel_host != d->file_host)
		d->kind = DIFF_SHIFTED;
	else if (k && !f)
		d->kind = DIFF_EXTRA;
	else if (!k && f)
		d->kind = DIFF_MISSING;
	else if (!k && !f)
		d->kind = DIFF_UNMAPPED;
	else
		return false;
	return true;
}

/*
 * v2: the kernel's range is written, unwritten or a hole, and the file must
 * have the same there: an extent not flagged unwritten, one flagged
 * unwritten at the same blocks, no extent. A gap in the table is as in v1.
 */
static bool differs_v2(const struct extent *k, const struct extent *f,
		       struct difference *d)
{
	bool k_unwritten = k && (k->flags & FIEMAP_EXTENT_UNWRITTEN);

	if (!k)
		d->kind = f ? DIFF_MISSING : DIFF_UNMAPPED;
	else if (k->flags & LAYOUT_EXTENT_HOLE) {
		if (!f)
			return false;
		d->kind = DIFF_STATE;
	} else if (!f)
		d->kind = k_unwritten ? DIFF_STATE : DIFF_EXTRA;
	else if (!extent_mappable(f->flags & ~FIEMAP_EXTENT_UNWRITTEN))
		d->kind = DIFF_UNMAPPABLE;
	else if (k_unwritten != !!(f->flags & FIEMAP_EXTENT_UNWRITTEN))
		d->kind = DIFF_STATE;
	else if (d->kernel_host != d->file_host)
		d->kind = DIFF_SHIFTED;
	else
		return false;
	return true;
}

void layout_compare(const struct layout *kernel, const struct layout *file,
		    uint64_t start, uint64_t end, struct comparison *cmp)
{
	size_t ki = 0, fi = 0;
	uint64_t x = start;

	memset(cmp, 0, sizeof(*cmp));
	cmp->start = start;
	cmp->end = end;
	cmp->kernel_extents = count_meeting(kernel, start, end);
	cmp->file_extents = count_meeting(file, start, end);

	while (x < end) {
		uint64_t next = end;
		const struct extent *k = extent_at(kernel, &ki, x, &next);
		const struct extent *f = extent_at(file, &fi, x, &next);
		struct difference d = {
			.file_off = x,
			.len = next - x,
			.kernel_states = kernel->states,
		};

		if (k) {
			d.kernel_listed = true;
			d.kernel_flags = k->flags;
		}
		if (k && !(k->flags & LAYOUT_EXTENT_HOLE)) {
			d.kernel_mapped = true;
			d.kernel_host = k->host_off + (x - k->file_off);
		}
		if (f) {
			d.file_mapped = true;
			d.file_host = f->host_off + (x - f->file_off);
			d.file_flags = f->flags;
		}
		if (kernel->states ? differs_v2(k, f, &d) : differs_v1(k, f, &d))
			add_difference(cmp, &d);
		x = next;
	}
}

void comparison_free(struct comparison *cmp)
{
	free(cmp->diff);
	memset(cmp, 0, sizeof(*cmp));
}
