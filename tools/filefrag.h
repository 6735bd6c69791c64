/* SPDX-License-Identifier: GPL-2.0 */
/*
 * filefrag.h -- read a saved `filefrag -v` (or -v -b<unit>, -e) output
 * of one file, as e2fsprogs 1.47 prints it.
 */
#ifndef DMLOOP_INSPECT_FILEFRAG_H
#define DMLOOP_INSPECT_FILEFRAG_H

#include <stdint.h>

#include "layout.h"

struct filefrag_output {
	char *file;		/* the path filefrag was given */
	uint64_t size;		/* bytes */
	uint64_t unit;		/* bytes per block in the listing */
	char *fs_type;		/* "ef53", NULL if not printed */
	size_t lines;		/* extent lines */
	struct layout layout;
};

int filefrag_parse(const char *path, struct filefrag_output *out);
void filefrag_free(struct filefrag_output *out);
/* "ext4", "xfs"... for filefrag's hex magic; NULL if unknown. */
const char *fs_type_name(unsigned long magic);

#endif
