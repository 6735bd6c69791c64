// SPDX-License-Identifier: GPL-2.0
/*
 * show.c -- `dmloop-inspect show <dev>`: a device's debugfs `info` and
 * `extents`. The extents are printed in filefrag -v -b512 columns
 * (logical = file sector, physical = host sector) so the listing can be
 * put beside `filefrag -v -b512 <file>`; a v2 table's state is one more
 * column, after the flags, and its holes (which filefrag does not list)
 * have no physical range.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "output.h"
#include "util.h"

static bool is_number(const char *s)
{
	uint64_t v;

	return parse_u64(s, &v) == 0;
}

static void show_human(const struct device_targets *dt)
{
	for (size_t i = 0; i < dt->n; i++) {
		const struct target *t = &dt->t[i];
		bool v2 = t->have_table && t->table.version >= 2;
		size_t width = 0;

		if (i)
			putchar('\n');
		printf("%s, target at sector %" PRIu64 " (%s)\n", dt->label,
		       t->inst->start, t->inst->dir);
		if (t->have_info) {
			for (size_t k = 0; k < t->info.n; k++)
				if (strlen(t->info.kv[k].key) > width)
					width = strlen(t->info.kv[k].key);
			for (size_t k = 0; k < t->info.n; k++)
				printf("  %s:%*s %s\n", t->info.kv[k].key,
				       (int)(width - strlen(t->info.kv[k].key)), "",
				       t->info.kv[k].value);
		}
		if (!t->have_table)
			continue;
		printf("  extents: %zu on host %u:%u, in 512-byte sectors "
		       "(logical: of the file; physical: of the host)\n",
		       t->table.n, t->table.host_major, t->table.host_minor);
		if (v2)
			printf("  states (extents v2): %zu written, %zu unwritten, "
			       "%zu hole%s\n",
			       extent_table_count(&t->table, EXTENT_WRITTEN),
			       extent_table_count(&t->table, EXTENT_UNWRITTEN),
			       extent_table_count(&t->table, EXTENT_HOLE),
			       extent_table_count(&t->table, EXTENT_HOLE) == 1 ? "" : "s");
		if (t->table.n == 0)
			continue;
		/* filefrag's header and widths (logical 8, physical 10). */
		printf(" ext: %*s %*s length: %*s flags:%s\n", 8 * 2 + 3,
		       "logical_offset:", 10 * 2 + 3, "physical_offset:", 10 + 1,
		       "expected:", v2 ? " state:" : "");
		for (size_t k = 0; k < t->table.n; k++) {
			const struct table_extent *e = &t->table.ext[k];
			uint64_t file_sector = (t->have_info ? t->info.offset / 512 : 0) +
					       e->dev_sector;
			const char *flags = k + 1 == t->table.n ? "last" : "";

			printf("%4zu: %8" PRIu64 "..%8" PRIu64 ": ", k, file_sector,
			       file_sector + e->sectors - 1);
			/* A hole has no blocks: no number a parser could take. */
			if (e->state == EXTENT_HOLE)
				printf("%10s  %10s", "-", "-");
			else
				printf("%10" PRIu64 "..%10" PRIu64, e->host_sector,
				       e->host_sector + e->sectors - 1);
			if (v2)
				printf(": %6" PRIu64 ": %10s  %-6s %s\n", e->sectors, "",
				       flags, extent_state_name(e->state));
			else
				printf(": %6" PRIu64 ": %10s  %s\n", e->sectors, "", flags);
		}
	}
}

static void show_json(const struct device_targets *dt)
{
	struct json j;

	json_init(&j, stdout);
	json_object_begin(&j, NULL);
	json_string(&j, "device", dt->label);
	json_u64(&j, "minor", dt->minor);
	json_string(&j, "name", dt->name);
	json_array_begin(&j, "targets");
	for (size_t i = 0; i < dt->n; i++) {
		const struct target *t = &dt->t[i];

		json_object_begin(&j, NULL);
		json_string(&j, "instance", t->inst->base);
		json_string(&j, "directory", t->inst->dir);
		json_u64(&j, "start", t->inst->start);
		json_string(&j, "dev", t->inst->dev);
		if (t->have_info) {
			json_object_begin(&j, "info");
			for (size_t k = 0; k < t->info.n; k++) {
				const struct info_entry *kv = &t->info.kv[k];
				uint64_t v;

				if (is_number(kv->value) && !parse_u64(kv->value, &v))
					json_u64(&j, kv->key, v);
				else
					json_string(&j, kv->key, kv->value);
			}
			json_object_end(&j);
		} else {
			json_null(&j, "info");
		}
		if (t->have_table) {
			char host[32];

			snprintf(host, sizeof(host), "%u:%u", t->table.host_major,
				 t->table.host_minor);
			json_string(&j, "host", host);
			if (t->table.version >= 2)
				json_u64(&j, "extents_version", t->table.version);
			json_array_begin(&j, "extents");
			for (size_t k = 0; k < t->table.n; k++) {
				const struct table_extent *e = &t->table.ext[k];

				json_object_begin(&j, NULL);
				json_u64(&j, "index", k);
				json_u64(&j, "dev_sector", e->dev_sector);
				json_u64(&j, "sectors", e->sectors);
				json_u64(&j, "host_sector", e->host_sector);
				if (t->table.version >= 2)
					json_string(&j, "state",
						    extent_state_name(e->state));
				if (t->have_info)
					json_u64(&j, "file_offset",
						 t->info.offset + e->dev_sector * 512);
				json_object_end(&j);
			}
			json_array_end(&j);
		} else {
			json_null(&j, "extents");
		}
		json_object_end(&j);
	}
	json_array_end(&j);
	json_object_end(&j);
	json_end(&j);
}

int cmd_show(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json",	no_argument,		NULL, 'j' },
		{ "start",	required_argument,	NULL, 'S' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct device_targets dt;
	bool json = false, partial, has_start = false;
	uint64_t start = 0;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'S':
			if (parse_u64_any(optarg, &start)) {
				error("--start: expected a sector number, got '%s'", optarg);
				return EXIT_ERROR;
			}
			has_start = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			return usage_error(NULL);
		}
	}
	if (optind + 1 != argc) {
		return usage_error("show: give one device");
	}
	if (device_targets_load(argv[optind], has_start ? &start : NULL, &dt,
				&partial))
		return EXIT_ERROR;
	if (json)
		show_json(&dt);
	else
		show_human(&dt);
	device_targets_free(&dt);
	/* Whatever could not be read was named on stderr. */
	return partial ? EXIT_ERROR : EXIT_OK;
}
