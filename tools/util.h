/* SPDX-License-Identifier: GPL-2.0 */
/*
 * util.h -- small helpers shared by dmloop-inspect's parts: error messages,
 * checked number parsing, a line reader for files of any line length.
 */
#ifndef DMLOOP_INSPECT_UTIL_H
#define DMLOOP_INSPECT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PROGNAME "dmloop-inspect"
#define DMLOOP_INSPECT_VERSION "1.1.0"

/* Exit codes of every subcommand; compare also uses EXIT_DIFFER. */
#define EXIT_OK		0
#define EXIT_DIFFER	1
#define EXIT_ERROR	2

void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * Send error() and warning() messages to f as well (report keeps them in
 * its archive); with quiet, only to f. f NULL: back to stderr alone.
 */
void error_capture(FILE *f, bool quiet);
void warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * A command line that cannot be used: the message (if fmt is not NULL),
 * then the pointer to --help.  Returns EXIT_ERROR for the caller to return.
 */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Parse an unsigned decimal number that must fill [s, s + len) exactly:
 * no sign, no blanks, no trailing junk, no overflow. Returns 0 or -1.
 */
int parse_u64_span(const char *s, size_t len, uint64_t *out);
int parse_u64(const char *s, uint64_t *out);
/* As parse_u64, with hex (0x...) allowed as well; for --offset style input. */
int parse_u64_any(const char *s, uint64_t *out);

/* a * b and a + b for sizes read from files: false on overflow. */
bool mul_u64(uint64_t a, uint64_t b, uint64_t *out);
bool add_u64(uint64_t a, uint64_t b, uint64_t *out);

/*
 * One line at a time, of any length; the newline (and a CR before it) is
 * stripped. lines_next() returns 1 with a line, 0 at end of file, -1 on a
 * read error or a NUL byte inside a line (message printed, naming file and
 * line).
 */
struct lines {
	FILE *f;
	const char *path;
	char *buf;
	size_t cap;
	size_t len;
	unsigned long lineno;
	bool ended_with_newline;
};

int lines_open(struct lines *l, const char *path);
int lines_next(struct lines *l);
void lines_close(struct lines *l);

/*
 * Read a whole (small, e.g. sysfs or debugfs) file into a NUL-terminated
 * buffer. Returns 0, or -errno with *out untouched.
 */
int read_text_file(const char *path, char **out, size_t *len);

char *xstrdup(const char *s);
void *xcalloc(size_t n, size_t size);
void *xrealloc_array(void *p, size_t n, size_t size);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Strip leading and trailing blanks in place; returns the new start. */
char *trim(char *s);

#endif
