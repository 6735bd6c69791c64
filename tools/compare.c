// SPDX-License-Identifier: GPL-2.0
/*
 * compare.c -- `dmloop-inspect compare`: the kernel's extent table against
 * FIEMAP of the backing file and saved filefrag -v outputs.
 *
 * Every source becomes byte ranges of the file on the host device, over the
 * range the device maps, [offset, offset + dev_sectors * 512).
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "commands.h"
#include "fiemap.h"
#include "filefrag.h"
#include "layout.h"
#include "output.h"
#include "util.h"

#define MAX_FILEFRAG 8

struct source_result {
	const char *kind;	/* "fiemap" or "filefrag" */
	char *input;
	size_t extents;		/* as the source listed them */
	char *host_note;	/* the file lives on another device */
	struct comparison cmp;
};

struct target_result {
	const char *device;	/* "dm-3 (img0)", NULL offline */
	const char *instance;	/* debugfs directory name, NULL offline */
	uint64_t start;
	const char *mode, *reason, *path;
	uint64_t offset, sectors;
	unsigned int host_major, host_minor;
	size_t kernel_extents;
	unsigned int table_version;	/* 2: ranges have states */
	size_t kernel_state[3];		/* v2: ranges by enum extent_state */
	struct source_result src[MAX_FILEFRAG + 1];
	size_t nsrc;
	int verdict;
};

struct compare_opts {
	bool json;
	const char *filefrag[MAX_FILEFRAG];
	size_t nfilefrag;
	const char *fiemap_path;
	bool no_fiemap;
	const char *extents_file, *info_file;
	bool has_offset, has_sectors, has_start;
	uint64_t offset, sectors, start;
};

static void result_free(struct target_result *r)
{
	for (size_t i = 0; i < r->nsrc; i++) {
		free(r->src[i].input);
		free(r->src[i].host_note);
		comparison_free(&r->src[i].cmp);
	}
	r->nsrc = 0;
}

static size_t result_differences(const struct target_result *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->nsrc; i++)
		n += r->src[i].cmp.n + (r->src[i].host_note != NULL);
	return n;
}

/*
 * Fill r->src from the given sources. The kernel side is table, shifted by
 * r->offset. Returns 0 or -1 (message printed).
 */
static int run_sources(struct target_result *r, const struct extent_table *table,
		       const char *fiemap_path, const char *const *filefrag,
		       size_t nfilefrag)
{
	struct layout kernel;
	uint64_t len, end;
	char *what;
	int rc = -1;

	if (!mul_u64(r->sectors, 512, &len) || !add_u64(r->offset, len, &end)) {
		error("offset %" PRIu64 " + %" PRIu64 " sectors is past 2^64 bytes",
		      r->offset, r->sectors);
		return -1;
	}
	if (table->n > 0) {
		const struct table_extent *last = &table->ext[table->n - 1];

		if (last->dev_sector + last->sectors > r->sectors) {
			error("extent table: extent %zu ends at sector %" PRIu64
			      ", past the device's %" PRIu64 " sectors", table->n - 1,
			      last->dev_sector + last->sectors, r->sectors);
			return -1;
		}
	}
	what = xasprintf("extent table of %s", r->device ? r->device : "the device");
	if (extent_table_layout(table, r->offset, &kernel, what)) {
		free(what);
		return -1;
	}
	free(what);
	r->kernel_extents = table->n;
	r->table_version = table->version;
	for (int st = EXTENT_WRITTEN; st <= EXTENT_HOLE; st++)
		r->kernel_state[st] = extent_table_count(table, (enum extent_state)st);

	if (fiemap_path) {
		struct source_result *s = &r->src[r->nsrc];
		struct file_layout fl;

		if (fiemap_read(fiemap_path, r->offset, end, &fl))
			goto out;
		s->kind = "fiemap";
		s->input = xstrdup(fiemap_path);
		s->extents = fl.extents;
		if (major(fl.st_dev) != r->host_major ||
		    minor(fl.st_dev) != r->host_minor)
			s->host_note = xasprintf("the file is on device %u:%u, the table maps to host %u:%u",
						 major(fl.st_dev), minor(fl.st_dev),
						 r->host_major, r->host_minor);
		layout_compare(&kernel, &fl.layout, r->offset, end, &s->cmp);
		file_layout_free(&fl);
		r->nsrc++;
	}
	for (size_t i = 0; i < nfilefrag; i++) {
		struct source_result *s = &r->src[r->nsrc];
		struct filefrag_output ff;

		if (filefrag_parse(filefrag[i], &ff))
			goto out;
		s->kind = "filefrag";
		s->input = xstrdup(filefrag[i]);
		s->extents = ff.lines;
		layout_compare(&kernel, &ff.layout, r->offset, end, &s->cmp);
		filefrag_free(&ff);
		r->nsrc++;
	}
	rc = 0;
out:
	layout_free(&kernel);
	r->verdict = result_differences(r) ? EXIT_DIFFER : EXIT_OK;
	return rc;
}

static char *host_cell(bool mapped, uint64_t host)
{
	if (!mapped)
		return xstrdup("-");
	if (host % 512)
		return xasprintf("byte %" PRIu64, host);
	return xasprintf("%" PRIu64, host / 512);
}

static void print_differences(FILE *f, const struct target_result *r,
			      const struct comparison *cmp)
{
	static const char *const head[] = {
		"KIND", "FILE_START", "FILE_END", "DEV_SECTOR", "SECTORS",
		"KERNEL_HOST", "FILE_HOST", "WHAT",
	};
	struct table t;

	/* Byte offsets of the file; device and host positions in sectors. */
	table_init(&t, 8, 0x7e);	/* numbers right-aligned */
	table_add(&t, head);
	for (size_t i = 0; i < cmp->n; i++) {
		const struct difference *d = &cmp->diff[i];
		char *cells[8];

		cells[0] = xstrdup(difference_kind_name(d->kind));
		cells[1] = xasprintf("%" PRIu64, d->file_off);
		cells[2] = xasprintf("%" PRIu64, d->file_off + d->len);
		cells[3] = xasprintf("%" PRIu64, (d->file_off - r->offset) / 512);
		cells[4] = xasprintf("%" PRIu64 "%s", d->len / 512,
				     d->len % 512 ? "+" : "");
		cells[5] = host_cell(d->kernel_mapped, d->kernel_host);
		cells[6] = host_cell(d->file_mapped, d->file_host);
		cells[7] = difference_note(d);
		table_add(&t, (const char *const *)cells);
		for (size_t c = 0; c < 8; c++)
			free(cells[c]);
	}
	table_print(&t, f, "    ");
	table_free(&t);
}

static void print_human(FILE *f, const struct target_result *r)
{
	if (r->device)
		fprintf(f, "%s, target at sector %" PRIu64 ": %s mode", r->device,
			r->start, r->mode);
	else
		fprintf(f, "extent table: %s mode", r->mode);
	if (r->reason && strcmp(r->reason, "-"))
		fprintf(f, " (%s)", r->reason);
	fputc('\n', f);
	if (!strcmp(r->mode, "file")) {
		fprintf(f, "  file mode: the device has no extent table, nothing to compare\n");
		return;
	}
	fprintf(f, "  file:   %s, bytes %" PRIu64 "..%" PRIu64 " (offset %" PRIu64
		", %" PRIu64 " sectors)\n", r->path ? r->path : "-",
		r->offset, r->offset + r->sectors * 512, r->offset, r->sectors);
	fprintf(f, "  kernel: %zu extent%s on host %u:%u", r->kernel_extents,
		r->kernel_extents == 1 ? "" : "s", r->host_major, r->host_minor);
	if (r->table_version >= 2)
		fprintf(f, " (v2: %zu written, %zu unwritten, %zu hole%s)",
			r->kernel_state[EXTENT_WRITTEN],
			r->kernel_state[EXTENT_UNWRITTEN],
			r->kernel_state[EXTENT_HOLE],
			r->kernel_state[EXTENT_HOLE] == 1 ? "" : "s");
	fputc('\n', f);
	for (size_t i = 0; i < r->nsrc; i++) {
		const struct source_result *s = &r->src[i];
		size_t n = s->cmp.n + (s->host_note != NULL);

		fprintf(f, "  %s %s: %zu extent%s: %s", s->kind, s->input,
			s->extents, s->extents == 1 ? "" : "s",
			n ? "differ" : "agree");
		if (n)
			fprintf(f, ", %zu difference%s", n, n == 1 ? "" : "s");
		fputc('\n', f);
		if (s->host_note)
			fprintf(f, "    host device: %s\n", s->host_note);
		if (s->cmp.n)
			print_differences(f, r, &s->cmp);
	}
}

static void print_json_target(struct json *j, const struct target_result *r)
{
	json_object_begin(j, NULL);
	json_string(j, "device", r->device);
	json_string(j, "instance", r->instance);
	json_u64(j, "start", r->start);
	json_string(j, "mode", r->mode);
	json_string(j, "reason", r->reason);
	json_string(j, "path", r->path);
	json_u64(j, "offset", r->offset);
	json_u64(j, "sectors", r->sectors);
	if (strcmp(r->mode, "file")) {
		char host[32];

		snprintf(host, sizeof(host), "%u:%u", r->host_major, r->host_minor);
		json_string(j, "host", host);
		json_u64(j, "kernel_extents", r->kernel_extents);
		if (r->table_version >= 2) {
			json_u64(j, "extents_version", r->table_version);
			json_object_begin(j, "kernel_states");
			for (int st = EXTENT_WRITTEN; st <= EXTENT_HOLE; st++)
				json_u64(j, extent_state_name((enum extent_state)st),
					 r->kernel_state[st]);
			json_object_end(j);
		}
	}
	json_array_begin(j, "comparisons");
	for (size_t i = 0; i < r->nsrc; i++) {
		const struct source_result *s = &r->src[i];

		json_object_begin(j, NULL);
		json_string(j, "source", s->kind);
		json_string(j, "input", s->input);
		json_u64(j, "extents", s->extents);
		json_string(j, "verdict",
			    s->cmp.n || s->host_note ? "differ" : "agree");
		json_string(j, "host_mismatch", s->host_note);
		json_array_begin(j, "differences");
		for (size_t k = 0; k < s->cmp.n; k++) {
			const struct difference *d = &s->cmp.diff[k];
			char flags[128];
			char *note = difference_note(d);

			json_object_begin(j, NULL);
			json_string(j, "kind", difference_kind_name(d->kind));
			json_u64(j, "file_start", d->file_off);
			json_u64(j, "file_end", d->file_off + d->len);
			json_u64(j, "bytes", d->len);
			json_u64(j, "dev_sector", (d->file_off - r->offset) / 512);
			if (d->kernel_mapped)
				json_u64(j, "kernel_host_byte", d->kernel_host);
			else
				json_null(j, "kernel_host_byte");
			if (d->file_mapped)
				json_u64(j, "file_host_byte", d->file_host);
			else
				json_null(j, "file_host_byte");
			json_string(j, "file_flags",
				    flags_name(d->file_flags, flags, sizeof(flags)));
			if (d->kernel_states) {
				json_string(j, "kernel_state",
					    difference_kernel_state(d));
				json_string(j, "file_state",
					    difference_file_state(d));
			}
			json_string(j, "what", note);
			json_object_end(j);
			free(note);
		}
		json_array_end(j);
		json_object_end(j);
	}
	json_array_end(j);
	json_string(j, "verdict", !strcmp(r->mode, "file") ? "file_mode" :
		    r->verdict == EXIT_OK ? "agree" : "differ");
	json_object_end(j);
}

static const char *verdict_name(int verdict, bool all_file_mode)
{
	if (verdict == EXIT_ERROR)
		return "error";
	if (all_file_mode)
		return "file_mode";
	return verdict == EXIT_OK ? "agree" : "differ";
}

static void finish(FILE *human, struct json *j, int verdict, bool all_file)
{
	if (human)
		fprintf(human, "verdict: %s\n", verdict == EXIT_OK && all_file ?
			"file mode, nothing compared" : verdict_name(verdict, false));
	if (j) {
		json_array_end(j);
		json_string(j, "verdict", verdict_name(verdict, all_file));
		json_object_end(j);
		json_end(j);
	}
}

static void fill_from_info(struct target_result *r, const struct target_info *info)
{
	r->mode = info->mode;
	r->reason = info->reason;
	r->path = info->path;
	r->offset = info->offset;
	r->sectors = info->dev_sectors;
}

int compare_device(const struct device_targets *dt, FILE *human, FILE *jf,
		   size_t *ndiff)
{
	struct json j;
	int verdict = EXIT_OK;
	bool all_file = true;

	*ndiff = 0;
	if (jf) {
		json_init(&j, jf);
		json_object_begin(&j, NULL);
		json_array_begin(&j, "targets");
	}
	for (size_t i = 0; i < dt->n; i++) {
		const struct target *t = &dt->t[i];
		struct target_result r = {
			.device = dt->label,
			.instance = t->inst->base,
			.start = t->inst->start,
		};

		if (!t->have_info || !t->have_table) {
			error("%s: cannot read %s/%s", dt->label, t->inst->dir,
			      t->have_info ? "extents" : "info");
			verdict = EXIT_ERROR;
			continue;
		}
		fill_from_info(&r, &t->info);
		r.host_major = t->table.host_major;
		r.host_minor = t->table.host_minor;
		if (strcmp(r.mode, "file")) {
			all_file = false;
			if (run_sources(&r, &t->table, t->info.path, NULL, 0)) {
				verdict = EXIT_ERROR;
				result_free(&r);
				continue;
			}
			*ndiff += result_differences(&r);
			if (r.verdict > verdict)
				verdict = r.verdict;
		}
		if (human)
			print_human(human, &r);
		if (jf)
			print_json_target(&j, &r);
		result_free(&r);
	}
	finish(human, jf ? &j : NULL, verdict, all_file);
	return verdict;
}

static int compare_live(const char *arg, const struct compare_opts *o)
{
	struct device_targets dt;
	struct json j;
	bool partial, all_file = true;
	int verdict = EXIT_OK;

	if (device_targets_load(arg, o->has_start ? &o->start : NULL, &dt,
				&partial))
		return EXIT_ERROR;
	if (dt.n > 1 && (o->nfilefrag || o->fiemap_path)) {
		error("%s has %zu dm-loop targets: choose one with --start SECTOR",
		      dt.label, dt.n);
		device_targets_free(&dt);
		return EXIT_ERROR;
	}
	if (o->json) {
		json_init(&j, stdout);
		json_object_begin(&j, NULL);
		json_array_begin(&j, "targets");
	}
	for (size_t i = 0; i < dt.n; i++) {
		const struct target *t = &dt.t[i];
		struct target_result r = {
			.device = dt.label,
			.instance = t->inst->base,
			.start = t->inst->start,
		};
		const char *fiemap_path;

		if (!t->have_info || !t->have_table) {
			verdict = EXIT_ERROR;	/* the parser said why */
			continue;
		}
		fill_from_info(&r, &t->info);
		r.host_major = t->table.host_major;
		r.host_minor = t->table.host_minor;
		if (strcmp(r.mode, "file")) {
			all_file = false;
			fiemap_path = o->no_fiemap ? NULL :
				      o->fiemap_path ? o->fiemap_path : t->info.path;
			if (run_sources(&r, &t->table, fiemap_path, o->filefrag,
					o->nfilefrag)) {
				verdict = EXIT_ERROR;
				result_free(&r);
				continue;
			}
			if (r.verdict > verdict)
				verdict = r.verdict;
		}
		if (o->json)
			print_json_target(&j, &r);
		else
			print_human(stdout, &r);
		result_free(&r);
	}
	finish(o->json ? NULL : stdout, o->json ? &j : NULL, verdict, all_file);
	device_targets_free(&dt);
	return verdict;
}

static int compare_offline(const struct compare_opts *o)
{
	struct target_result r = { .mode = "block", .reason = "-" };
	struct target_info info;
	struct extent_table table;
	bool have_info = false;
	int verdict;

	if (!o->fiemap_path && !o->nfilefrag) {
		error("compare --extents: give --fiemap PATH or --filefrag FILE to compare with");
		return EXIT_ERROR;
	}
	if (o->info_file && (o->has_offset || o->has_sectors)) {
		error("compare: --%s conflicts with --info (which gives both)",
		      o->has_offset ? "offset" : "sectors");
		return EXIT_ERROR;
	}
	if (!o->info_file && !o->has_sectors) {
		error("compare --extents: give --sectors N (the device's length) or --info FILE");
		return EXIT_ERROR;
	}
	if (o->info_file) {
		if (info_parse(o->info_file, &info))
			return EXIT_ERROR;
		have_info = true;
		fill_from_info(&r, &info);
	} else {
		r.offset = o->has_offset ? o->offset : 0;
		r.sectors = o->sectors;
	}
	if (extent_table_parse(o->extents_file, &table)) {
		if (have_info)
			info_free(&info);
		return EXIT_ERROR;
	}
	if (!have_info && table.n == 0) {
		r.mode = "file";	/* a block-mode table is never empty */
		r.reason = NULL;
	}
	r.host_major = table.host_major;
	r.host_minor = table.host_minor;
	if (strcmp(r.mode, "file") &&
	    run_sources(&r, &table, o->fiemap_path, o->filefrag, o->nfilefrag)) {
		result_free(&r);
		verdict = EXIT_ERROR;
		goto out;
	}
	verdict = strcmp(r.mode, "file") ? r.verdict : EXIT_OK;
	if (o->json) {
		struct json j;

		json_init(&j, stdout);
		json_object_begin(&j, NULL);
		json_array_begin(&j, "targets");
		print_json_target(&j, &r);
		finish(NULL, &j, verdict, !strcmp(r.mode, "file"));
	} else {
		print_human(stdout, &r);
		finish(stdout, NULL, verdict, !strcmp(r.mode, "file"));
	}
	result_free(&r);
out:
	extent_table_free(&table);
	if (have_info)
		info_free(&info);
	return verdict;
}

static int number_option(const char *opt, const char *arg, uint64_t *out)
{
	if (parse_u64_any(arg, out)) {
		error("%s: expected an unsigned number below 2^64, got '%s'", opt, arg);
		return -1;
	}
	return 0;
}

int cmd_compare(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json",	no_argument,		NULL, 'j' },
		{ "filefrag",	required_argument,	NULL, 'f' },
		{ "fiemap",	required_argument,	NULL, 'F' },
		{ "no-fiemap",	no_argument,		NULL, 'N' },
		{ "extents",	required_argument,	NULL, 'e' },
		{ "info",	required_argument,	NULL, 'i' },
		{ "offset",	required_argument,	NULL, 'o' },
		{ "sectors",	required_argument,	NULL, 's' },
		{ "start",	required_argument,	NULL, 'S' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct compare_opts o = { 0 };
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o.json = true;
			break;
		case 'f':
			if (o.nfilefrag == MAX_FILEFRAG) {
				error("compare: at most %d --filefrag files", MAX_FILEFRAG);
				return EXIT_ERROR;
			}
			o.filefrag[o.nfilefrag++] = optarg;
			break;
		case 'F':
			if (o.fiemap_path) {
				error("compare: --fiemap given twice");
				return EXIT_ERROR;
			}
			o.fiemap_path = optarg;
			break;
		case 'N':
			o.no_fiemap = true;
			break;
		case 'e':
			o.extents_file = optarg;
			break;
		case 'i':
			o.info_file = optarg;
			break;
		case 'o':
			if (number_option("--offset", optarg, &o.offset))
				return EXIT_ERROR;
			o.has_offset = true;
			break;
		case 's':
			if (number_option("--sectors", optarg, &o.sectors))
				return EXIT_ERROR;
			o.has_sectors = true;
			break;
		case 'S':
			if (number_option("--start", optarg, &o.start))
				return EXIT_ERROR;
			o.has_start = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			return usage_error(NULL);
		}
	}
	if (o.no_fiemap && o.fiemap_path) {
		error("compare: --no-fiemap conflicts with --fiemap");
		return EXIT_ERROR;
	}
	if (o.extents_file) {
		if (optind != argc) {
			error("compare --extents takes no device argument");
			return EXIT_ERROR;
		}
		if (o.has_start || o.no_fiemap) {
			error("compare: --%s needs a device, not --extents",
			      o.has_start ? "start" : "no-fiemap");
			return EXIT_ERROR;
		}
		return compare_offline(&o);
	}
	if (o.info_file || o.has_offset || o.has_sectors) {
		error("compare: --info, --offset and --sectors go with --extents");
		return EXIT_ERROR;
	}
	if (optind + 1 != argc) {
		return usage_error("compare: give one device (or --extents FILE)");
	}
	if (o.no_fiemap && !o.nfilefrag) {
		error("compare: --no-fiemap leaves nothing to compare: add --filefrag FILE");
		return EXIT_ERROR;
	}
	return compare_live(argv[optind], &o);
}
