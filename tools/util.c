// SPDX-License-Identifier: GPL-2.0
/*
 * util.c -- error messages, checked numbers, a line reader.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static FILE *capture;
static bool capture_quiet;

void error_capture(FILE *f, bool quiet)
{
	capture = f;
	capture_quiet = f && quiet;
}

static void message(const char *prefix, const char *fmt, va_list ap)
{
	va_list again;

	fflush(stdout);
	if (capture) {
		va_copy(again, ap);
		fputs(prefix, capture);
		vfprintf(capture, fmt, again);
		fputc('\n', capture);
		va_end(again);
	}
	if (capture_quiet)
		return;
	fputs(PROGNAME ": ", stderr);
	fputs(prefix, stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	message("", fmt, ap);
	va_end(ap);
}

void warning(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	message("warning: ", fmt, ap);
	va_end(ap);
}

int usage_error(const char *fmt, ...)
{
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		message("", fmt, ap);
		va_end(ap);
	}
	fprintf(stderr, "Try '" PROGNAME " --help'.\n");
	return EXIT_ERROR;
}

int parse_u64_span(const char *s, size_t len, uint64_t *out)
{
	char buf[32];
	char *end;
	unsigned long long v;
	size_t i;

	/* 20 digits is UINT64_MAX; longer can only be an overflow or junk. */
	if (len == 0 || len >= sizeof(buf))
		return -1;
	for (i = 0; i < len; i++)
		if (!isdigit((unsigned char)s[i]))
			return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (errno || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

int parse_u64(const char *s, uint64_t *out)
{
	return parse_u64_span(s, strlen(s), out);
}

int parse_u64_any(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		if (!isxdigit((unsigned char)s[2]))
			return -1;
		errno = 0;
		v = strtoull(s + 2, &end, 16);
		if (errno || *end != '\0')
			return -1;
		*out = v;
		return 0;
	}
	return parse_u64(s, out);
}

bool mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

bool add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}

int lines_open(struct lines *l, const char *path)
{
	memset(l, 0, sizeof(*l));
	l->path = path;
	l->f = fopen(path, "re");
	if (!l->f) {
		error("%s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int lines_next(struct lines *l)
{
	ssize_t n;

	errno = 0;
	n = getline(&l->buf, &l->cap, l->f);
	if (n < 0) {
		if (ferror(l->f)) {
			error("%s: line %lu: read error: %s", l->path,
			      l->lineno + 1, strerror(errno ? errno : EIO));
			return -1;
		}
		return 0;
	}
	l->lineno++;
	l->ended_with_newline = n > 0 && l->buf[n - 1] == '\n';
	if (l->ended_with_newline)
		n--;
	if (n > 0 && l->buf[n - 1] == '\r')
		n--;
	l->buf[n] = '\0';
	l->len = (size_t)n;
	if (strlen(l->buf) != l->len) {
		error("%s: line %lu: NUL byte in line: not a text file",
		      l->path, l->lineno);
		return -1;
	}
	return 1;
}

void lines_close(struct lines *l)
{
	if (l->f)
		fclose(l->f);
	free(l->buf);
	memset(l, 0, sizeof(*l));
}

int read_text_file(const char *path, char **out, size_t *lenp)
{
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int fd, err = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t n;

		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = xrealloc_array(buf, cap, 1);
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (err) {
		free(buf);
		return err;
	}
	if (!buf)
		buf = xcalloc(1, 1);
	buf[len] = '\0';
	*out = buf;
	if (lenp)
		*lenp = len;
	return 0;
}

static void out_of_memory(void)
{
	error("out of memory");
	exit(EXIT_ERROR);
}

char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		out_of_memory();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		out_of_memory();
	return p;
}

void *xrealloc_array(void *p, size_t n, size_t size)
{
	size_t bytes;

	if (__builtin_mul_overflow(n, size, &bytes))
		out_of_memory();
	p = realloc(p, bytes ? bytes : 1);
	if (!p)
		out_of_memory();
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		out_of_memory();
	return s;
}

char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	*e = '\0';
	return s;
}
