/* SPDX-License-Identifier: GPL-2.0 */
/*
 * layout.h -- where a file's bytes live on the host block device, from any
 * source (the kernel's extent table, FIEMAP, a saved filefrag -v), as byte
 * ranges; and the comparison of two such layouts over a file range.
 */
#ifndef DMLOOP_INSPECT_LAYOUT_H
#define DMLOOP_INSPECT_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/fiemap.h>

/* FIEMAP_EXTENT_* bits, plus ext4's hole flag as filefrag -E prints it. */
#define LAYOUT_EXTENT_HOLE	0x08000000u

struct extent {
	uint64_t file_off;	/* bytes from the start of the file */
	uint64_t len;		/* bytes */
	uint64_t host_off;	/* bytes from the start of the host device */
	uint32_t flags;		/* FIEMAP_EXTENT_* */
};

struct layout {
	struct extent *ext;
	size_t n, cap;
	/*
	 * The kernel's side of a v2 table: every range says whether it is
	 * written (flags 0), unwritten (FIEMAP_EXTENT_UNWRITTEN, at its
	 * blocks) or a hole (LAYOUT_EXTENT_HOLE, no blocks).
	 */
	bool states;
};

void layout_init(struct layout *l);
void layout_free(struct layout *l);
void layout_add(struct layout *l, uint64_t file_off, uint64_t len,
		uint64_t host_off, uint32_t flags);

/*
 * Sort by file offset, reject overlaps (message names what), merge runs
 * contiguous in the file and on the host with the same mappability.
 * Returns 0 or -1.
 */
int layout_normalise(struct layout *l, const char *what);

/* Flags a block-mode device must never be mapped over. */
#define LAYOUT_UNMAPPABLE_FLAGS						\
	(FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC |		\
	 FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED |		\
	 FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE |	\
	 FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_UNWRITTEN |		\
	 FIEMAP_EXTENT_SHARED | LAYOUT_EXTENT_HOLE)
/* Flags that say nothing about where the data is. */
#define LAYOUT_BENIGN_FLAGS (FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED)

bool extent_mappable(uint32_t flags);
/* The flags that make an extent unmappable, by filefrag's names. */
const char *flags_name(uint32_t flags, char *buf, size_t size);
/* filefrag's name ("unwritten") to the bit; 0 if unknown. */
uint32_t flag_by_name(const char *name);

enum difference_kind {
	DIFF_MISSING,		/* the file has data there, the kernel maps none */
	DIFF_EXTRA,		/* the kernel maps it, the file has no extent */
	DIFF_SHIFTED,		/* both map it, to different host bytes */
	DIFF_UNMAPPABLE,	/* the kernel maps an extent that must not be */
	DIFF_UNMAPPED,		/* neither maps it: a gap in a block-mode table */
	DIFF_STATE,		/* v2: written, unwritten or hole, not as the file */
};

struct difference {
	enum difference_kind kind;
	uint64_t file_off, len;		/* bytes of the file */
	bool kernel_states;		/* the kernel's layout has states (v2) */
	bool kernel_listed;		/* in a range of the kernel's table */
	uint32_t kernel_flags;		/* its state, as in struct layout */
	bool kernel_mapped;		/* to blocks: not a gap, not a hole */
	uint64_t kernel_host;		/* bytes on the host, if kernel_mapped */
	bool file_mapped;
	uint64_t file_host;		/* bytes on the host, if file_mapped */
	uint32_t file_flags;
};

struct comparison {
	uint64_t start, end;		/* the file range compared */
	size_t kernel_extents;		/* extents meeting [start, end) */
	size_t file_extents;
	struct difference *diff;
	size_t n, cap;
};

const char *difference_kind_name(enum difference_kind k);
/*
 * "written", "unwritten" or "hole": the kernel's state of d's range (NULL
 * in a gap of the table or without states), and the file's (an extent not
 * flagged unwritten is written).
 */
const char *difference_kernel_state(const struct difference *d);
const char *difference_file_state(const struct difference *d);
/* One line saying what the difference means, for people. */
char *difference_note(const struct difference *d);

/*
 * Compare the kernel's layout with the file's over [start, end) of the file.
 * Both must be normalised. Fills cmp (free with comparison_free). With
 * kernel->states (a v2 table), an unwritten range must be an unwritten
 * extent at the same place, a hole no extent, and a written range an
 * extent not flagged unwritten; without, every kernel range is written and
 * an unwritten extent under it is unmappable.
 */
void layout_compare(const struct layout *kernel, const struct layout *file,
		    uint64_t start, uint64_t end, struct comparison *cmp);
void comparison_free(struct comparison *cmp);

#endif
