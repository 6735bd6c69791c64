// SPDX-License-Identifier: GPL-2.0
/*
 * list.c -- `dmloop-inspect list`: every dm-loop target on the system,
 * from device-mapper's own tables (libdevmapper), not from debugfs, so it
 * works without debugfs and shows what the kernel really runs.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "dm.h"
#include "output.h"
#include "util.h"

/* INFO status: "<mode> <extents> <reads> <writes> <flushes> <splits> <reason>" */
static void status_fields(const char *status, char *mode, size_t msize,
			  char *extents, size_t esize)
{
	char m[16], e[24];

	snprintf(mode, msize, "?");
	snprintf(extents, esize, "?");
	if (status && sscanf(status, "%15s %23s", m, e) == 2) {
		uint64_t v;

		if (!strcmp(m, "block") || !strcmp(m, "file"))
			snprintf(mode, msize, "%s", m);
		if (!parse_u64(e, &v))
			snprintf(extents, esize, "%s", e);
	}
}

int cmd_list(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json",	no_argument,	NULL, 'j' },
		{ "help",	no_argument,	NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const head[] = {
		"NAME", "DEVICE", "START", "SECTORS", "MODE", "EXTENTS",
		"OFFSET", "PATH",
	};
	struct dm_device_list l;
	struct table t;
	struct json j;
	bool json = false;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			return usage_error(NULL);
		}
	}
	if (optind != argc) {
		error("list takes no arguments");
		return EXIT_ERROR;
	}
	if (dm_list_devices(&l))
		return EXIT_ERROR;

	if (json) {
		json_init(&j, stdout);
		json_array_begin(&j, NULL);
	} else {
		table_init(&t, 8, 0x6c);	/* START SECTORS EXTENTS OFFSET */
		table_add(&t, head);
	}
	for (size_t i = 0; i < l.n; i++) {
		const struct dm_device *d = &l.v[i];

		for (size_t k = 0; k < d->nt; k++) {
			const struct dm_target_line *tl = &d->t[k];
			char mode[16], extents[24], dev[24], start[24], len[24];
			char offs[24];
			char *path = NULL;
			uint64_t offset = 0;
			bool params_ok;

			if (strcmp(tl->type, "loop"))
				continue;
			params_ok = dm_loop_params(tl->params, &path, &offset) == 0;
			status_fields(tl->status, mode, sizeof(mode), extents,
				      sizeof(extents));
			snprintf(dev, sizeof(dev), "dm-%u", d->minor);
			if (json) {
				uint64_t ext;

				json_object_begin(&j, NULL);
				json_string(&j, "name", d->name);
				json_string(&j, "device", dev);
				json_u64(&j, "major", d->major);
				json_u64(&j, "minor", d->minor);
				json_u64(&j, "start", tl->start);
				json_u64(&j, "sectors", tl->length);
				json_string(&j, "mode", strcmp(mode, "?") ? mode : NULL);
				if (parse_u64(extents, &ext))
					json_null(&j, "extents");
				else
					json_u64(&j, "extents", ext);
				json_string(&j, "reason", dm_loop_status_reason(tl->status));
				json_string(&j, "path", params_ok ? path : NULL);
				if (params_ok)
					json_u64(&j, "offset", offset);
				else
					json_null(&j, "offset");
				json_string(&j, "table", tl->params);
				json_string(&j, "status", tl->status);
				json_bool(&j, "read_only", d->read_only);
				json_object_end(&j);
			} else {
				const char *row[8];

				snprintf(start, sizeof(start), "%" PRIu64, tl->start);
				snprintf(len, sizeof(len), "%" PRIu64, tl->length);
				snprintf(offs, sizeof(offs), "%" PRIu64, offset);
				row[0] = d->name;
				row[1] = dev;
				row[2] = start;
				row[3] = len;
				row[4] = mode;
				row[5] = extents;
				row[6] = params_ok ? offs : "?";
				row[7] = params_ok ? path : tl->params;
				table_add(&t, row);
			}
			free(path);
		}
	}
	if (json) {
		json_array_end(&j);
		json_end(&j);
	} else {
		table_print(&t, stdout, NULL);
		table_free(&t);
	}
	dm_device_list_free(&l);
	return EXIT_OK;
}
