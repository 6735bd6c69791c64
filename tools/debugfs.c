// SPDX-License-Identifier: GPL-2.0
/*
 * debugfs.c -- read dm-loop's debugfs directories.
 *
 * Everything here is parsed as untrusted text: a truncated copy in a bug
 * report, or a kernel with a newer format, must give a message naming the
 * file and line, never a wrong answer.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "debugfs.h"
#include "util.h"

#define EXTENTS_MAGIC "# dm-loop extents v"
#define EXTENTS_V1_COLUMNS "index dev_sector sectors host_sector"
#define EXTENTS_V2_COLUMNS EXTENTS_V1_COLUMNS " state"

const char *debugfs_root(void)
{
	const char *env = getenv("DMLOOP_DEBUGFS");

	return env && *env ? env : "/sys/kernel/debug";
}

/* "M:m" with both parts checked. */
static int parse_devno(const char *s, unsigned int *major, unsigned int *minor)
{
	const char *colon = strchr(s, ':');
	uint64_t ma, mi;

	if (!colon || parse_u64_span(s, (size_t)(colon - s), &ma) ||
	    parse_u64(colon + 1, &mi) || ma > 0xfff || mi > 0xfffff)
		return -1;
	*major = (unsigned int)ma;
	*minor = (unsigned int)mi;
	return 0;
}

const char *info_get(const struct target_info *info, const char *key)
{
	size_t i;

	for (i = 0; i < info->n; i++)
		if (!strcmp(info->kv[i].key, key))
			return info->kv[i].value;
	return NULL;
}

void info_free(struct target_info *info)
{
	size_t i;

	for (i = 0; i < info->n; i++) {
		free(info->kv[i].key);
		free(info->kv[i].value);
	}
	free(info->kv);
	memset(info, 0, sizeof(*info));
}

static int info_number(const char *file, const struct target_info *info,
		       const char *key, uint64_t *out)
{
	const char *v = info_get(info, key);

	if (!v) {
		error("%s: no '%s' line", file, key);
		return -1;
	}
	if (parse_u64(v, out)) {
		error("%s: %s: not an unsigned 64-bit number: '%s'", file, key, v);
		return -1;
	}
	return 0;
}

int info_parse(const char *path, struct target_info *info)
{
	struct lines l;
	int rc;

	memset(info, 0, sizeof(*info));
	if (lines_open(&l, path))
		return -1;
	while ((rc = lines_next(&l)) > 0) {
		char *colon = strstr(l.buf, ": ");
		size_t i;

		if (l.len == 0)
			continue;
		if (!colon && l.len > 0 && l.buf[l.len - 1] == ':')
			colon = &l.buf[l.len - 1];	/* "key:" with an empty value */
		if (!colon || colon == l.buf) {
			error("%s: line %lu: expected 'key: value', got '%.80s'",
			      path, l.lineno, l.buf);
			rc = -1;
			break;
		}
		*colon = '\0';
		for (i = 0; i < info->n; i++)
			if (!strcmp(info->kv[i].key, l.buf))
				break;
		if (i < info->n) {
			error("%s: line %lu: key '%s' given twice", path,
			      l.lineno, l.buf);
			rc = -1;
			break;
		}
		info->kv = xrealloc_array(info->kv, info->n + 1,
					  sizeof(*info->kv));
		info->kv[info->n].key = xstrdup(l.buf);
		info->kv[info->n].value = xstrdup(colon[1] ? colon + 2 : "");
		info->n++;
	}
	lines_close(&l);
	if (rc < 0)
		goto bad;

	info->mode = info_get(info, "mode");
	info->reason = info_get(info, "reason");
	info->path = info_get(info, "path");
	if (!info->mode || !info->path) {
		error("%s: no '%s' line (truncated or not a dm-loop info file)",
		      path, info->mode ? "path" : "mode");
		goto bad;
	}
	if (strcmp(info->mode, "block") && strcmp(info->mode, "file")) {
		error("%s: mode: expected 'block' or 'file', got '%s'", path,
		      info->mode);
		goto bad;
	}
	if (info_number(path, info, "offset", &info->offset) ||
	    info_number(path, info, "dev_sectors", &info->dev_sectors) ||
	    info_number(path, info, "extents", &info->extents))
		goto bad;
	if (info_get(info, "host_dev") &&
	    parse_devno(info_get(info, "host_dev"), &info->host_major,
			&info->host_minor)) {
		error("%s: host_dev: expected 'major:minor', got '%s'", path,
		      info_get(info, "host_dev"));
		goto bad;
	}
	return 0;
bad:
	info_free(info);
	return -1;
}

static const char *const state_names[] = {
	[EXTENT_WRITTEN] = "written",
	[EXTENT_UNWRITTEN] = "unwritten",
	[EXTENT_HOLE] = "hole",
};

const char *extent_state_name(enum extent_state s)
{
	return (size_t)s < sizeof(state_names) / sizeof(state_names[0]) ?
	       state_names[s] : "?";
}

static int parse_state(const char *s, enum extent_state *out)
{
	size_t i;

	for (i = 0; i < sizeof(state_names) / sizeof(state_names[0]); i++) {
		if (!strcmp(s, state_names[i])) {
			*out = (enum extent_state)i;
			return 0;
		}
	}
	return -1;
}

size_t extent_table_count(const struct extent_table *t, enum extent_state s)
{
	size_t i, n = 0;

	for (i = 0; i < t->n; i++)
		n += t->ext[i].state == s;
	return n;
}

/* Split a line into at most max blank-separated words, in place. */
static size_t split_words(char *s, char **w, size_t max)
{
	size_t n = 0;

	while (*s) {
		while (*s == ' ' || *s == '\t')
			*s++ = '\0';
		if (!*s)
			break;
		if (n == max)
			return max + 1;
		w[n++] = s;
		while (*s && *s != ' ' && *s != '\t')
			s++;
	}
	return n;
}

int extent_table_parse(const char *path, struct extent_table *t)
{
	struct lines l;
	uint64_t count = 0, version;
	bool have_host = false;
	size_t cap = 0, columns;
	int rc;

	memset(t, 0, sizeof(*t));
	if (lines_open(&l, path))
		return -1;

	rc = lines_next(&l);
	if (rc == 0) {
		error("%s: empty file (expected '%s1')", path, EXTENTS_MAGIC);
		goto bad;
	}
	if (rc < 0)
		goto bad;
	if (strncmp(l.buf, EXTENTS_MAGIC, strlen(EXTENTS_MAGIC))) {
		error("%s: line 1: not a dm-loop extents file (expected '%s1')",
		      path, EXTENTS_MAGIC);
		goto bad;
	}
	if (parse_u64(l.buf + strlen(EXTENTS_MAGIC), &version) ||
	    version < 1 || version > 2) {
		error("%s: line 1: unsupported format '%s' (this tool reads v1 and v2)",
		      path, l.buf);
		goto bad;
	}
	t->version = (unsigned int)version;
	columns = version == 1 ? 4 : 5;

	while ((rc = lines_next(&l)) > 0) {
		enum extent_state state = EXTENT_WRITTEN;
		char *w[6];
		uint64_t v[4], end;
		size_t n, i;

		if (l.buf[0] == '#') {
			char *words[6];

			if (strncmp(l.buf, "# host ", strlen("# host ")))
				continue;	/* other headers: column names */
			if (have_host) {
				error("%s: line %lu: second '# host' header",
				      path, l.lineno);
				goto bad;
			}
			n = split_words(l.buf, words, 5);
			if (n != 5 || strcmp(words[1], "host") ||
			    parse_devno(words[2], &t->host_major,
					&t->host_minor) ||
			    strcmp(words[3], "extents") ||
			    parse_u64(words[4], &count)) {
				error("%s: line %lu: expected '# host <major>:<minor> extents <count>'",
				      path, l.lineno);
				goto bad;
			}
			have_host = true;
			continue;
		}
		if (!have_host) {
			error("%s: line %lu: extent before the '# host' header",
			      path, l.lineno);
			goto bad;
		}
		n = split_words(l.buf, w, columns);
		if (n != columns && version == 1) {
			error("%s: line %lu: expected 4 numbers '" EXTENTS_V1_COLUMNS "', got %s",
			      path, l.lineno, n > 4 ? "more" : "fewer");
			goto bad;
		}
		if (n != columns) {
			uint64_t last;
			bool v1_line = n == 4 && !parse_u64(w[3], &last);

			error("%s: line %lu: expected 4 numbers and a state '" EXTENTS_V2_COLUMNS
			      "', got %s%s", path, l.lineno, n > 5 ? "more" : "fewer",
			      v1_line ? " (no state: a v1 line in a v2 file?)" : "");
			goto bad;
		}
		for (i = 0; i < 4; i++) {
			if (parse_u64(w[i], &v[i])) {
				error("%s: line %lu: field %zu: not an unsigned 64-bit number: '%.40s'",
				      path, l.lineno, i + 1, w[i]);
				goto bad;
			}
		}
		if (version == 2 && parse_state(w[4], &state)) {
			if (!l.ended_with_newline) {
				/* "hole" cut to "ho": say what happened. */
				error("%s: line %lu: no newline at the end (truncated?)",
				      path, l.lineno);
				goto bad;
			}
			error("%s: line %lu: field 5: unknown extent state '%.40s' "
			      "(expected written, unwritten or hole)",
			      path, l.lineno, w[4]);
			goto bad;
		}
		if (state == EXTENT_HOLE && v[3] != 0) {
			error("%s: line %lu: hole with host_sector %" PRIu64
			      " (a hole has no blocks: its host_sector is 0)",
			      path, l.lineno, v[3]);
			goto bad;
		}
		if (v[0] != t->n) {
			error("%s: line %lu: extent index %" PRIu64 ", expected %zu",
			      path, l.lineno, v[0], t->n);
			goto bad;
		}
		if (v[2] == 0) {
			error("%s: line %lu: extent of 0 sectors", path, l.lineno);
			goto bad;
		}
		if (!add_u64(v[1], v[2], &end) || !add_u64(v[3], v[2], &end) ||
		    !mul_u64(v[1] + v[2], 512, &end) ||
		    !mul_u64(v[3] + v[2], 512, &end)) {
			error("%s: line %lu: extent reaches past 2^64 bytes",
			      path, l.lineno);
			goto bad;
		}
		if (t->n > 0) {
			const struct table_extent *p = &t->ext[t->n - 1];

			if (v[1] < p->dev_sector + p->sectors) {
				error("%s: line %lu: extent %" PRIu64 " starts at sector %" PRIu64
				      ", inside or before extent %zu (ends at %" PRIu64 ")",
				      path, l.lineno, v[0], v[1], t->n - 1,
				      p->dev_sector + p->sectors);
				goto bad;
			}
		}
		if (t->n == cap) {
			cap = cap ? cap * 2 : 64;
			t->ext = xrealloc_array(t->ext, cap, sizeof(*t->ext));
		}
		t->ext[t->n++] = (struct table_extent){
			.dev_sector = v[1],
			.sectors = v[2],
			.host_sector = v[3],
			.state = state,
		};
	}
	if (rc < 0)
		goto bad;
	if (!have_host) {
		error("%s: no '# host <major>:<minor> extents <count>' header (truncated?)",
		      path);
		goto bad;
	}
	if (count != t->n) {
		error("%s: header says %" PRIu64 " extents, file has %zu (truncated?)",
		      path, count, t->n);
		goto bad;
	}
	if (!l.ended_with_newline && l.lineno > 0) {
		error("%s: line %lu: no newline at the end (truncated?)", path,
		      l.lineno);
		goto bad;
	}
	lines_close(&l);
	return 0;
bad:
	lines_close(&l);
	extent_table_free(t);
	return -1;
}

int extent_table_layout(const struct extent_table *t, uint64_t offset,
			struct layout *out, const char *what)
{
	size_t i;

	layout_init(out);
	for (i = 0; i < t->n; i++) {
		const struct table_extent *e = &t->ext[i];
		uint64_t dev_off, file_off, len, host, end;

		/* The parser checked the sector arithmetic; offset is new. */
		dev_off = e->dev_sector * 512;
		len = e->sectors * 512;
		host = e->host_sector * 512;
		if (!add_u64(offset, dev_off, &file_off) ||
		    !add_u64(file_off, len, &end)) {
			error("%s: extent %zu: offset %" PRIu64 " + device sector %" PRIu64
			      " is past 2^64 bytes", what, i, offset, e->dev_sector);
			layout_free(out);
			return -1;
		}
		layout_add(out, file_off, len, host,
			   e->state == EXTENT_HOLE ? LAYOUT_EXTENT_HOLE :
			   e->state == EXTENT_UNWRITTEN ? FIEMAP_EXTENT_UNWRITTEN : 0);
	}
	out->states = t->version >= 2;
	return layout_normalise(out, what);
}

void extent_table_free(struct extent_table *t)
{
	free(t->ext);
	memset(t, 0, sizeof(*t));
}

/* dm-<minor>-<start>-<id>: all three checked numbers. */
static int parse_instance_name(const char *s, struct instance *in)
{
	const char *p[3], *q;
	uint64_t v[3];
	int i;

	if (strncmp(s, "dm-", 3))
		return -1;
	p[0] = s + 3;
	for (i = 0; i < 3; i++) {
		q = i < 2 ? strchr(p[i], '-') : p[i] + strlen(p[i]);
		if (!q || parse_u64_span(p[i], (size_t)(q - p[i]), &v[i]))
			return -1;
		if (i < 2)
			p[i + 1] = q + 1;
	}
	if (v[0] > 0xfffff)
		return -1;
	in->minor = (unsigned int)v[0];
	in->start = v[1];
	in->id = v[2];
	return 0;
}

static char *read_one_line(const char *dir, const char *file)
{
	char *path = xasprintf("%s/%s", dir, file);
	char *text = NULL, *nl;

	if (read_text_file(path, &text, NULL)) {
		free(path);
		return NULL;
	}
	free(path);
	nl = strchr(text, '\n');
	if (nl)
		*nl = '\0';
	return text;
}

static int instance_cmp(const void *a, const void *b)
{
	const struct instance *x = a, *y = b;

	if (x->minor != y->minor)
		return x->minor < y->minor ? -1 : 1;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return 0;
}

static void instance_free(struct instance *in)
{
	free(in->dir);
	free(in->base);
	free(in->name);
	free(in->dev);
}

int debugfs_instances(struct instance_list *out, bool quiet)
{
	char *top = xasprintf("%s/dm-loop", debugfs_root());
	struct dirent *de;
	size_t i, n = 0, cap = 0;
	struct instance *v = NULL;
	DIR *d;

	memset(out, 0, sizeof(*out));
	d = opendir(top);
	if (!d) {
		int err = errno;

		if (!quiet)
			error("%s: %s (is debugfs mounted and the dm_loop module loaded? "
			      "mount -t debugfs none /sys/kernel/debug)", top,
			      strerror(err));
		free(top);
		return err == ENOENT ? -ENOENT : -1;
	}
	while ((de = readdir(d))) {
		struct instance in = { 0 };

		if (parse_instance_name(de->d_name, &in))
			continue;	/* ".", "..", anything not ours */
		in.base = xstrdup(de->d_name);
		in.dir = xasprintf("%s/%s", top, de->d_name);
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc_array(v, cap, sizeof(*v));
		}
		v[n++] = in;
	}
	closedir(d);
	free(top);

	if (n > 1)
		qsort(v, n, sizeof(*v), instance_cmp);
	/* During a reload the old (live) table has the smaller id. */
	out->v = v;
	for (i = 0; i < n; i++) {
		if (out->n > 0 && out->v[out->n - 1].minor == v[i].minor &&
		    out->v[out->n - 1].start == v[i].start) {
			instance_free(&v[i]);
			continue;
		}
		out->v[out->n] = v[i];
		out->v[out->n].name = read_one_line(v[i].dir, "name");
		out->v[out->n].dev = read_one_line(v[i].dir, "dev");
		out->n++;
	}
	return 0;
}

void instance_list_free(struct instance_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		instance_free(&l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}
