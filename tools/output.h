/* SPDX-License-Identifier: GPL-2.0 */
/*
 * output.h -- the two ways dmloop-inspect prints: aligned columns for
 * people, JSON (written by hand, strings escaped) for machines.
 */
#ifndef DMLOOP_INSPECT_OUTPUT_H
#define DMLOOP_INSPECT_OUTPUT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH 16

struct json {
	FILE *f;
	int depth;
	bool has_items[JSON_MAX_DEPTH];
};

void json_init(struct json *j, FILE *f);
/* key is NULL inside arrays and for the top level value. */
void json_object_begin(struct json *j, const char *key);
void json_object_end(struct json *j);
void json_array_begin(struct json *j, const char *key);
void json_array_end(struct json *j);
void json_string(struct json *j, const char *key, const char *value);
void json_u64(struct json *j, const char *key, uint64_t value);
void json_i64(struct json *j, const char *key, int64_t value);
void json_bool(struct json *j, const char *key, bool value);
void json_null(struct json *j, const char *key);
/* Finish the document with a newline. */
void json_end(struct json *j);

/* A table of strings printed with each column as wide as its widest cell. */
struct table {
	size_t ncols;
	size_t nrows;
	char **cells;		/* nrows * ncols, owned */
	uint64_t right;		/* bit n set: column n is right-aligned */
};

void table_init(struct table *t, size_t ncols, uint64_t right_aligned);
/* Add a row of ncols strings; NULL prints as "-". */
void table_add(struct table *t, const char *const *cells);
void table_print(const struct table *t, FILE *f, const char *indent);
void table_free(struct table *t);

#endif
