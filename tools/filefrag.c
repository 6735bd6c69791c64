// SPDX-License-Identifier: GPL-2.0
/*
 * filefrag.c -- parse saved `filefrag -v` output (e2fsprogs misc/filefrag.c):
 *
 *   Filesystem type is: ef53
 *   File size of /mnt/img is 1048576 (256 blocks of 4096 bytes)
 *    ext:     logical_offset:        physical_offset: length:   expected: flags:
 *      0:        0..     255:      34816..     35071:    256:             last,eof
 *   /mnt/img: 1 extent found
 *
 * Extent lines are "%4d: %*llu..%*llu: %*llu..%*llu: %6llu: [expected: ]flags",
 * in units of the "blocks of N bytes" of the header (-b changes it). Numbers
 * wider than their column touch the "..", so the line is read with a cursor,
 * not split on blanks. -X (hex) output has no marker and is not accepted.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "filefrag.h"
#include "util.h"

const char *fs_type_name(unsigned long magic)
{
	switch (magic) {
	case 0xef53:
		return "ext2/ext3/ext4";
	case 0x58465342:
		return "xfs";
	case 0x9123683e:
		return "btrfs";
	case 0x01021994:
		return "tmpfs";
	case 0x01021997:
		return "9p";
	case 0x6969:
		return "nfs";
	case 0x65735546:
		return "fuse";
	case 0xf2f52010:
		return "f2fs";
	}
	return NULL;
}

struct cursor {
	const char *p;
};

static void skip_blanks(struct cursor *c)
{
	while (*c->p == ' ' || *c->p == '\t')
		c->p++;
}

static int cursor_number(struct cursor *c, uint64_t *v)
{
	const char *s;

	skip_blanks(c);
	s = c->p;
	while (isdigit((unsigned char)*c->p))
		c->p++;
	return parse_u64_span(s, (size_t)(c->p - s), v);
}

static int cursor_expect(struct cursor *c, const char *lit)
{
	size_t n = strlen(lit);

	if (strncmp(c->p, lit, n))
		return -1;
	c->p += n;
	return 0;
}

/* "File size of <file> is <size> (<n> block[s] of <unit> bytes)", from the right. */
static int parse_size_line(char *line, struct filefrag_output *out)
{
	static const char prefix[] = "File size of ";
	static const char cached[] = " -- pre-cached";
	char *open_paren, *is, *end = line + strlen(line);
	uint64_t blocks;
	struct cursor c;
	size_t n = strlen(cached);

	if ((size_t)(end - line) > n && !strcmp(end - n, cached))
		*(end -= n) = '\0';
	open_paren = strrchr(line, '(');
	if (!open_paren || open_paren < line + sizeof(prefix) ||
	    open_paren[-1] != ' ')
		return -1;
	c.p = open_paren + 1;
	if (cursor_number(&c, &blocks))
		return -1;
	if (cursor_expect(&c, " blocks of ") && cursor_expect(&c, " block of "))
		return -1;
	if (cursor_number(&c, &out->unit) || strcmp(c.p, " bytes)"))
		return -1;
	/* Now back from the '(' over "<size>" and " is ". */
	is = open_paren - 1;
	while (is > line && isdigit((unsigned char)is[-1]))
		is--;
	if (parse_u64_span(is, (size_t)(open_paren - 1 - is), &out->size))
		return -1;
	if (is - line < (ptrdiff_t)(sizeof(prefix) - 1 + 4) ||
	    strncmp(is - 4, " is ", 4))
		return -1;
	out->file = strndup(line + sizeof(prefix) - 1,
			    (size_t)(is - 4 - (line + sizeof(prefix) - 1)));
	if (!out->file)
		return -1;
	return 0;
}

static int parse_flags(const char *path, unsigned long lineno, char *s,
		       uint32_t *flags)
{
	char *save = NULL, *tok;

	*flags = 0;
	for (tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		uint32_t bit;
		uint64_t v;

		tok = trim(tok);
		if (!strcmp(tok, "eof"))
			continue;
		bit = flag_by_name(tok);
		if (!bit && !strncmp(tok, "0x", 2) && !parse_u64_any(tok, &v) &&
		    v && v <= 0xffffffffu && !(v & (v - 1)))
			bit = (uint32_t)v;	/* filefrag prints unknown bits in hex */
		if (!bit) {
			error("%s: line %lu: unknown extent flag '%.40s'", path,
			      lineno, tok);
			return -1;
		}
		*flags |= bit;
	}
	return 0;
}

static int parse_extent_line(const char *path, unsigned long lineno, char *line,
			     struct filefrag_output *out)
{
	uint64_t idx, lstart, lend, pstart, pend, len, expected, unit = out->unit;
	uint64_t file_off, file_end, host, host_end;
	uint32_t flags;
	struct cursor c = { line };
	const char *what = NULL;

	if (cursor_number(&c, &idx) || cursor_expect(&c, ":"))
		what = "an extent number";
	else if (cursor_number(&c, &lstart) || cursor_expect(&c, ".."))
		what = "the logical start";
	else if (cursor_number(&c, &lend) || cursor_expect(&c, ":"))
		what = "the logical end";
	else if (cursor_number(&c, &pstart) || cursor_expect(&c, ".."))
		what = "the physical start";
	else if (cursor_number(&c, &pend) || cursor_expect(&c, ":"))
		what = "the physical end";
	else if (cursor_number(&c, &len) || cursor_expect(&c, ":"))
		what = "the length";
	if (what) {
		error("%s: line %lu: bad extent line at %s (column %zu): "
		      "expected 'ext: start..end: start..end: length: [expected:] flags', "
		      "numbers unsigned and below 2^64",
		      path, lineno, what, (size_t)(c.p - line) + 1);
		return -1;
	}
	skip_blanks(&c);
	if (isdigit((unsigned char)*c.p) &&
	    (cursor_number(&c, &expected) || cursor_expect(&c, ":"))) {
		error("%s: line %lu: bad 'expected' column", path, lineno);
		return -1;
	}
	if (parse_flags(path, lineno, (char *)c.p, &flags))
		return -1;
	if (idx != out->lines) {
		error("%s: line %lu: extent number %" PRIu64 ", expected %zu",
		      path, lineno, idx, out->lines);
		return -1;
	}
	out->lines++;

	if (lend < lstart) {
		error("%s: line %lu: logical range %" PRIu64 "..%" PRIu64 " ends before it starts",
		      path, lineno, lstart, lend);
		return -1;
	}
	/* filefrag prints inline data offsets in bytes. */
	if (flags & FIEMAP_EXTENT_DATA_INLINE)
		unit = 1;
	if (!mul_u64(lstart, unit, &file_off) ||
	    !mul_u64(lend + 1, unit, &file_end) || lend + 1 == 0) {
		error("%s: line %lu: logical range past 2^64 bytes", path, lineno);
		return -1;
	}
	/* Unknown location and holes: length 0, physical 0, range valid. */
	if (flags & (FIEMAP_EXTENT_UNKNOWN | LAYOUT_EXTENT_HOLE)) {
		if (flags & LAYOUT_EXTENT_HOLE)
			return 0;
		layout_add(&out->layout, file_off, file_end - file_off, 0, flags);
		return 0;
	}
	if (len != lend - lstart + 1 || pend < pstart ||
	    pend - pstart != lend - lstart) {
		error("%s: line %lu: length %" PRIu64 " does not match the ranges %" PRIu64
		      "..%" PRIu64 " and %" PRIu64 "..%" PRIu64
		      " (blocks of %" PRIu64 " bytes coarser than the file system's? use filefrag -v or -b512)",
		      path, lineno, len, lstart, lend, pstart, pend, unit);
		return -1;
	}
	if (!mul_u64(pstart, unit, &host) || !mul_u64(pend + 1, unit, &host_end) ||
	    pend + 1 == 0) {
		error("%s: line %lu: physical range past 2^64 bytes", path, lineno);
		return -1;
	}
	layout_add(&out->layout, file_off, file_end - file_off, host, flags);
	return 0;
}

static bool is_extent_header(const char *s)
{
	while (*s == ' ')
		s++;
	return !strncmp(s, "ext:", 4) && strstr(s, "logical_offset:") &&
	       strstr(s, "physical_offset:");
}

/* "<file>: N extents found" or "<file>: 1 extent found[, perfection...]" */
static bool is_trailer(const char *s, const char *file)
{
	size_t n = strlen(file);
	uint64_t count;
	struct cursor c;

	if (strncmp(s, file, n) || strncmp(s + n, ": ", 2))
		return false;
	c.p = s + n + 2;
	if (cursor_number(&c, &count))
		return false;
	return !cursor_expect(&c, " extents found") ||
	       !cursor_expect(&c, " extent found");
}

int filefrag_parse(const char *path, struct filefrag_output *out)
{
	enum { START, HEADER, TABLE, DONE } state = START;
	struct lines l;
	int rc;

	memset(out, 0, sizeof(*out));
	layout_init(&out->layout);
	if (lines_open(&l, path))
		return -1;
	while ((rc = lines_next(&l)) > 0) {
		char *s = trim(l.buf);
		if (*s == '\0')
			continue;
		if (!strncmp(s, "Filesystem type is: ", 20) && state == START) {
			const char *hex = s + 20;
			size_t k = 0;

			while (isxdigit((unsigned char)hex[k]))
				k++;
			if (k == 0 || k > 16 || hex[k]) {
				error("%s: line %lu: expected a hexadecimal file system magic, got '%.40s'",
				      path, l.lineno, hex);
				goto bad;
			}
			free(out->fs_type);
			out->fs_type = xstrdup(hex);
			continue;
		}
		if (!strncmp(s, "Filesystem cylinder groups approximately ", 41))
			continue;
		if (!strncmp(s, "File size of ", 13)) {
			if (state != START) {
				error("%s: line %lu: a second file: give filefrag output of one file",
				      path, l.lineno);
				goto bad;
			}
			if (parse_size_line(s, out)) {
				error("%s: line %lu: expected 'File size of <file> is <bytes> (<n> blocks of <unit> bytes)'",
				      path, l.lineno);
				goto bad;
			}
			if (out->unit == 0 || (out->unit & (out->unit - 1))) {
				error("%s: line %lu: block size %" PRIu64 " is not a power of two",
				      path, l.lineno, out->unit);
				goto bad;
			}
			state = HEADER;
			continue;
		}
		if (state == START) {
			error("%s: line %lu: expected 'Filesystem type is:' or 'File size of' "
			      "(is this 'filefrag -v' output?)", path, l.lineno);
			goto bad;
		}
		if (state == DONE) {
			error("%s: line %lu: text after the 'extents found' line", path,
			      l.lineno);
			goto bad;
		}
		if (is_trailer(s, out->file)) {
			state = DONE;
			continue;
		}
		if (!strncmp(s, "Discontinuity:", 14)) {
			error("%s: line %lu: FIBMAP output lists no extents: run 'filefrag -v -e'",
			      path, l.lineno);
			goto bad;
		}
		if (state == HEADER && is_extent_header(s)) {
			state = TABLE;
			continue;
		}
		if (state == TABLE && isdigit((unsigned char)*s)) {
			if (parse_extent_line(path, l.lineno, s, out))
				goto bad;
			continue;
		}
		error("%s: line %lu: unexpected text '%.60s'", path, l.lineno, s);
		goto bad;
	}
	if (rc < 0)
		goto bad;
	if (state == START) {
		error("%s: %s: no 'File size of' line (is this 'filefrag -v' output?)",
		      path, l.lineno ? "no filefrag header" : "empty file");
		goto bad;
	}
	if (state != DONE) {
		error("%s: truncated: no '%s: N extents found' line at the end",
		      path, out->file);
		goto bad;
	}
	lines_close(&l);
	return layout_normalise(&out->layout, path) ? (filefrag_free(out), -1) : 0;
bad:
	lines_close(&l);
	filefrag_free(out);
	return -1;
}

void filefrag_free(struct filefrag_output *out)
{
	free(out->file);
	free(out->fs_type);
	layout_free(&out->layout);
	memset(out, 0, sizeof(*out));
}
