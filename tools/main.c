// SPDX-License-Identifier: GPL-2.0
/*
 * dmloop-inspect -- look at dm-loop devices from user space: list them,
 * show their debugfs state, compare the kernel's extent table with the
 * backing file's layout, and pack a bug report.
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "util.h"

void usage(FILE *f)
{
	fputs(
"Usage: " PROGNAME " list [--json]\n"
"       " PROGNAME " show [--json] [--start SECTOR] DEVICE\n"
"       " PROGNAME " compare [--json] [--start SECTOR] [--fiemap PATH | --no-fiemap]\n"
"                      [--filefrag FILE]... DEVICE\n"
"       " PROGNAME " compare [--json] --extents FILE (--info FILE | [--offset BYTES] --sectors N)\n"
"                      [--fiemap PATH] [--filefrag FILE]...\n"
"       " PROGNAME " report [-o FILE.tar.gz] DEVICE\n"
"       " PROGNAME " --help | --version\n"
"\n"
"Look at dm-loop devices (device-mapper target \"loop\", a block device over a\n"
"regular file).\n"
"\n"
"Commands:\n"
"  list      every dm-loop target: name, dm-N, start and length, mode,\n"
"            extents, offset and file (needs device-mapper: libdevmapper)\n"
"  show      the debugfs info and extents of DEVICE\n"
"  compare   the kernel's extent table of DEVICE against FIEMAP of its file\n"
"            and against saved 'filefrag -v' outputs, over the byte range the\n"
"            device maps; or, with --extents, a saved extents file against\n"
"            --fiemap/--filefrag without a kernel\n"
"  report    write one .tar.gz with everything a maintainer asks for\n"
"\n"
"DEVICE is a dm name, /dev/mapper/NAME, /dev/dm-N, dm-N or MAJOR:MINOR.\n"
"\n"
"Options:\n"
"  --json             machine-readable output (list, show, compare)\n"
"  --start SECTOR     only the loop target starting at SECTOR of the device\n"
"  --filefrag FILE    a saved 'filefrag -v' output of the backing file (also\n"
"                     -v -b512, -v -b4096, -e; ext4 or XFS; not -X)\n"
"  --fiemap PATH      read FIEMAP of PATH instead of the table's file\n"
"  --no-fiemap        compare with --filefrag outputs only\n"
"  --extents FILE     a saved debugfs 'extents' file instead of a device\n"
"  --info FILE        its debugfs 'info' file (gives mode, offset, sectors)\n"
"  --offset BYTES     where the device starts in the file (default 0)\n"
"  --sectors N        the device's length in 512-byte sectors\n"
"  -o, --output FILE  the report archive (default\n"
"                     dmloop-report-NAME-YYYYmmdd-HHMMSS.tar.gz)\n"
"\n"
"Exit status: 0 success (compare: the layouts agree, or file mode); 1 compare\n"
"found differences; 2 error.\n"
"\n"
"Environment: DMLOOP_DEBUGFS is where debugfs is mounted (default\n"
"/sys/kernel/debug).\n"
"See dmloop-inspect(8).\n", f);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} commands[] = {
		{ "list",	cmd_list },
		{ "show",	cmd_show },
		{ "compare",	cmd_compare },
		{ "report",	cmd_report },
	};
	size_t i;

	if (argc < 2) {
		return usage_error("no command given");
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf(PROGNAME " " DMLOOP_INSPECT_VERSION "\n");
		return EXIT_OK;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char name[64];

		if (strcmp(argv[1], commands[i].name))
			continue;
		/* getopt names argv[0] in its messages. */
		snprintf(name, sizeof(name), PROGNAME " %s", commands[i].name);
		argv[1] = name;
		return commands[i].fn(argc - 1, argv + 1);
	}
	return usage_error("unknown command '%s'", argv[1]);
}
