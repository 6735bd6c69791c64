// SPDX-License-Identifier: GPL-2.0
/*
 * report.c -- `dmloop-inspect report <dev>`: one .tar.gz with everything a
 * maintainer asks for, and a SUMMARY to read first.
 *
 * Each part is gathered on its own: a part that cannot be had (no debugfs,
 * device gone, file unreadable, no device-mapper) is named in MISSING with
 * the reason, and the rest is still written. The archive is built in a
 * temporary directory and packed with tar.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "dm.h"
#include "filefrag.h"
#include "util.h"

struct report {
	char *tmp;		/* the temporary directory */
	char *top;		/* tmp/<name>: what the archive holds */
	char *name;		/* dmloop-report-<dev>-<time> */
	FILE *missing;
	size_t nmissing;
	char *missing_text;
	size_t missing_len;
	FILE *errors;		/* error() messages while gathering */
	char *errors_text;
	size_t errors_len;
	size_t errors_mark;
};

/* What SUMMARY says about one target, from debugfs or else from dm. */
struct target_view {
	uint64_t start, sectors;
	const char *mode, *reason, *path;
	uint64_t offset;
	char *extents;		/* text: from either source */
	char *states;		/* a v2 table's ranges by state, NULL for v1 */
	char *host;
	const char *instance;
	char *dm_path;		/* owned, from the table line */
	struct stat st;
	bool have_stat;
	struct statfs sfs;
	bool have_statfs;
	char *mount_point, *mount_opts, *fs_name;
};

/* Messages error() printed since the last call, on one line. */
static char *take_errors(struct report *r)
{
	char *s, *p;

	fflush(r->errors);
	s = xstrdup(r->errors_text ? r->errors_text + r->errors_mark : "");
	r->errors_mark = r->errors_len;
	for (p = s; *p; p++)
		if (*p == '\n')
			*p = p[1] ? ';' : '\0';
	return s;
}

static void missing(struct report *r, const char *what, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void missing(struct report *r, const char *what, const char *fmt, ...)
{
	va_list ap;

	fprintf(r->missing, "%s: ", what);
	va_start(ap, fmt);
	vfprintf(r->missing, fmt, ap);
	va_end(ap);
	fputc('\n', r->missing);
	r->nmissing++;
}

static void missing_errors(struct report *r, const char *what,
			   const char *fallback)
{
	char *why = take_errors(r);

	missing(r, what, "%s", *why ? why : fallback);
	free(why);
}

static int mkdir_p(const char *path)
{
	char *p = xstrdup(path), *s;

	for (s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) && errno != EEXIST) {
			free(p);
			return -1;
		}
		*s = '/';
	}
	free(p);
	if (mkdir(path, 0755) && errno != EEXIST)
		return -1;
	return 0;
}

/* Open rel (inside the archive) for writing, creating its directory. */
static FILE *open_out(struct report *r, const char *rel)
{
	char *path = xasprintf("%s/%s", r->top, rel);
	char *slash = strrchr(path, '/');
	FILE *f;

	*slash = '\0';
	mkdir_p(path);
	*slash = '/';
	f = fopen(path, "we");
	if (!f)
		missing(r, rel, "cannot write: %s", strerror(errno));
	free(path);
	return f;
}

static void write_text(struct report *r, const char *rel, const char *text,
		       size_t len)
{
	FILE *f = open_out(r, rel);

	if (!f)
		return;
	fwrite(text, 1, len, f);
	fclose(f);
}

static int copy_file(struct report *r, const char *rel, const char *src,
		     bool quiet)
{
	char *text;
	size_t len;
	int rc = read_text_file(src, &text, &len);

	if (rc) {
		if (!quiet)
			missing(r, rel, "%s: %s", src, strerror(-rc));
		return -1;
	}
	write_text(r, rel, text, len);
	free(text);
	return 0;
}

/* Every readable regular file of src into rel/; one level of subdirectories. */
static int copy_dir(struct report *r, const char *rel, const char *src,
		    int depth)
{
	DIR *d = opendir(src);
	struct dirent *de;

	if (!d) {
		missing(r, rel, "%s: %s", src, strerror(errno));
		return -1;
	}
	while ((de = readdir(d))) {
		char *from, *to;
		struct stat st;

		if (de->d_name[0] == '.')
			continue;
		from = xasprintf("%s/%s", src, de->d_name);
		to = xasprintf("%s/%s", rel, de->d_name);
		if (stat(from, &st) == 0) {
			/* Write-only or failing sysfs attributes are skipped. */
			if (S_ISREG(st.st_mode))
				copy_file(r, to, from, true);
			else if (S_ISDIR(st.st_mode) && depth > 0)
				copy_dir(r, to, from, depth - 1);
		}
		free(from);
		free(to);
	}
	closedir(d);
	return 0;
}

/*
 * Run argv with its output (stdout and stderr) in rel. Returns the exit
 * status, 127 if it could not be run.
 */
static int run(struct report *r, const char *rel, char *const argv[])
{
	char *path = xasprintf("%s/%s", r->top, rel);
	char *slash = strrchr(path, '/');
	int status = 0, fd;
	pid_t pid;

	*slash = '\0';
	mkdir_p(path);
	*slash = '/';
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	free(path);
	if (fd < 0) {
		missing(r, rel, "cannot write: %s", strerror(errno));
		return 127;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		close(fd);
		missing(r, rel, "fork: %s", strerror(errno));
		return 127;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);

		if (null >= 0)
			dup2(null, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		setenv("LC_ALL", "C", 1);
		execvp(argv[0], argv);
		fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fd);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status))
		status = WEXITSTATUS(status);
	else
		status = 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	if (status == 127)
		missing(r, rel, "could not run %s (not installed?)", argv[0]);
	else if (status)
		missing(r, rel, "'%s %s' exited with %d (its output is in the file)",
			argv[0], argv[1] ? argv[1] : "", status);
	return status;
}

static void gather_system(struct report *r)
{
	char *uname_argv[] = { "uname", "-a", NULL };
	struct stat st;

	run(r, "uname", uname_argv);
	copy_file(r, "os-release", "/etc/os-release", true);
	if (stat("/sys/module/dm_loop", &st)) {
		missing(r, "module", "/sys/module/dm_loop: %s (dm_loop not loaded)",
			strerror(errno));
		return;
	}
	copy_file(r, "module/version", "/sys/module/dm_loop/version", false);
	copy_file(r, "module/srcversion", "/sys/module/dm_loop/srcversion", true);
	copy_file(r, "module/taint", "/sys/module/dm_loop/taint", true);
	copy_file(r, "module/refcnt", "/sys/module/dm_loop/refcnt", true);
	copy_dir(r, "module/parameters", "/sys/module/dm_loop/parameters", 0);
}

/* The kernel log's dm-loop lines: /dev/kmsg, else dmesg. */
static bool dm_loop_line(const char *s)
{
	return strcasestr(s, "dm-loop") || strcasestr(s, "dm_loop") ||
	       (strstr(s, "device-mapper:") && strstr(s, "loop"));
}

static size_t gather_kernel_log(struct report *r)
{
	size_t lines = 0;
	char buf[8192];
	FILE *out;
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0) {
		char *argv[] = { "dmesg", NULL };
		char *path, *text = NULL, *line, *save = NULL;

		if (run(r, "kernel-log.all", argv))
			return 0;
		path = xasprintf("%s/kernel-log.all", r->top);
		if (read_text_file(path, &text, NULL) == 0 &&
		    (out = open_out(r, "kernel-log"))) {
			for (line = strtok_r(text, "\n", &save); line;
			     line = strtok_r(NULL, "\n", &save))
				if (dm_loop_line(line)) {
					fprintf(out, "%s\n", line);
					lines++;
				}
			if (lines == 0)
				fputs("(no dm-loop lines in the kernel log)\n", out);
			fclose(out);
		}
		unlink(path);
		free(path);
		free(text);
		return lines;
	}
	out = open_out(r, "kernel-log");
	if (!out) {
		close(fd);
		return 0;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		char *semi, *nl, *comma;
		unsigned long long usec;

		if (n < 0 && errno == EPIPE)
			continue;	/* overwritten while reading: go on */
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;		/* EAGAIN: the end of the log */
		buf[n] = '\0';
		/* "prio,seq,usec,flags;message\n KEY=value..." */
		semi = strchr(buf, ';');
		if (!semi)
			continue;
		nl = strchr(semi, '\n');
		if (nl)
			*nl = '\0';
		if (!dm_loop_line(semi + 1))
			continue;
		comma = strchr(buf, ',');
		comma = comma ? strchr(comma + 1, ',') : NULL;
		usec = comma ? strtoull(comma + 1, NULL, 10) : 0;
		fprintf(out, "[%5llu.%06llu] %s\n", usec / 1000000,
			usec % 1000000, semi + 1);
		lines++;
	}
	close(fd);
	if (lines == 0)
		fputs("(no dm-loop lines in the kernel log)\n", out);
	fclose(out);
	return lines;
}

static void gather_dmsetup(struct report *r, const char *name)
{
	static const char *const verbs[] = { "table", "status", "info", "deps" };
	char *version_argv[] = { "dmsetup", "version", NULL };

	if (dm_kernel_available() == 0) {
		missing(r, "dmsetup", "the kernel has no device-mapper (no device-mapper in /proc/misc)");
		return;
	}
	if (!name) {
		missing(r, "dmsetup", "no device-mapper device of that name or number");
		return;
	}
	run(r, "dmsetup/version", version_argv);
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		char *argv[] = { "dmsetup", (char *)verbs[i], (char *)name, NULL };
		char *rel = xasprintf("dmsetup/%s", verbs[i]);

		run(r, rel, argv);
		free(rel);
	}
}

/* Every debugfs directory of this dm minor, the reloading ones too. */
static void gather_debugfs(struct report *r, unsigned int minor, bool quiet)
{
	char *top = xasprintf("%s/dm-loop", debugfs_root());
	char *prefix = xasprintf("dm-%u-", minor);
	struct dirent *de;
	DIR *d = opendir(top);

	if (!d) {
		if (!quiet)
			missing(r, "debugfs", "%s: %s", top, strerror(errno));
		goto out;
	}
	while ((de = readdir(d))) {
		char *src, *rel;

		if (strncmp(de->d_name, prefix, strlen(prefix)))
			continue;
		src = xasprintf("%s/%s", top, de->d_name);
		rel = xasprintf("debugfs/%s", de->d_name);
		copy_dir(r, rel, src, 0);
		free(src);
		free(rel);
	}
	closedir(d);
out:
	free(top);
	free(prefix);
}

/* The /proc/self/mountinfo lines of the file system on dev. */
static void gather_mountinfo(struct report *r, const char *rel,
			     struct target_view *v)
{
	char *text = NULL, *line, *save = NULL;
	char devno[32];
	FILE *out;
	int rc = read_text_file("/proc/self/mountinfo", &text, NULL);

	if (rc) {
		missing(r, rel, "/proc/self/mountinfo: %s", strerror(-rc));
		return;
	}
	out = open_out(r, rel);
	snprintf(devno, sizeof(devno), " %u:%u ", major(v->st.st_dev),
		 minor(v->st.st_dev));
	for (line = strtok_r(text, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char mp[PATH_MAX], opts[1024], fs[64];
		size_t mplen;

		if (!strstr(line, devno))
			continue;
		if (out)
			fprintf(out, "%s\n", line);
		/* "id parent M:m root mountpoint options ... - fstype source superopts" */
		if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s", mp, opts) != 2)
			continue;
		mplen = strlen(mp);
		/* The longest mount point that holds the file. */
		if (v->path && !strncmp(v->path, mp, mplen) &&
		    (mplen == 1 || v->path[mplen] == '/') &&
		    (!v->mount_point || mplen > strlen(v->mount_point))) {
			char *dash = strstr(line, " - ");

			free(v->mount_point);
			free(v->mount_opts);
			free(v->fs_name);
			v->mount_point = xstrdup(mp);
			v->mount_opts = xstrdup(opts);
			v->fs_name = NULL;
			if (dash && sscanf(dash + 3, "%63s", fs) == 1)
				v->fs_name = xstrdup(fs);
		}
	}
	if (out)
		fclose(out);
	free(text);
}

/* Size and queue limits of a block device; a partition's from its disk. */
static void gather_block_geometry(struct report *r, const char *rel,
				  unsigned int ma, unsigned int mi)
{
	char *sys = xasprintf("/sys/dev/block/%u:%u", ma, mi);
	char *queue = xasprintf("%s/queue", sys);
	char *to;
	struct stat st;
	static const char *const files[] = {
		"size", "ro", "removable", "alignment_offset",
		"discard_alignment", "partition", "start", "dev",
	};

	if (stat(sys, &st)) {
		missing(r, rel, "%s: %s", sys, strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *from = xasprintf("%s/%s", sys, files[i]);

		to = xasprintf("%s/%s", rel, files[i]);
		copy_file(r, to, from, true);
		free(from);
		free(to);
	}
	if (stat(queue, &st)) {
		free(queue);
		queue = xasprintf("%s/../queue", sys);	/* a partition */
	}
	to = xasprintf("%s/queue", rel);
	copy_dir(r, to, queue, 1);
	free(to);
out:
	free(sys);
	free(queue);
}

static void gather_file(struct report *r, const char *dir,
			struct target_view *v)
{
	char *rel;

	if (!v->path) {
		missing(r, dir, "the backing file's path is not known");
		return;
	}
	if (stat(v->path, &v->st)) {
		missing(r, dir, "%s: %s", v->path, strerror(errno));
		return;
	}
	v->have_stat = true;
	{
		char *argv[] = { "stat", (char *)v->path, NULL };

		rel = xasprintf("%s/stat", dir);
		run(r, rel, argv);
		free(rel);
	}
	{
		char *argv[] = { "filefrag", "-v", (char *)v->path, NULL };

		rel = xasprintf("%s/filefrag-v", dir);
		run(r, rel, argv);
		free(rel);
	}
	{
		char *argv[] = { "filefrag", "-v", "-b512", (char *)v->path, NULL };

		rel = xasprintf("%s/filefrag-v-b512", dir);
		run(r, rel, argv);
		free(rel);
	}
	if (statfs(v->path, &v->sfs) == 0) {
		const char *name = fs_type_name((unsigned long)v->sfs.f_type);
		FILE *f;

		v->have_statfs = true;
		rel = xasprintf("%s/statfs", dir);
		f = open_out(r, rel);
		if (f) {
			fprintf(f, "type: %lx (%s)\nblock_size: %ld\nfragment_size: %ld\n"
				"blocks: %llu\nblocks_free: %llu\nblocks_available: %llu\n"
				"files: %llu\nfiles_free: %llu\nname_max: %ld\nflags: %#lx\n",
				(unsigned long)v->sfs.f_type, name ? name : "unknown",
				(long)v->sfs.f_bsize, (long)v->sfs.f_frsize,
				(unsigned long long)v->sfs.f_blocks,
				(unsigned long long)v->sfs.f_bfree,
				(unsigned long long)v->sfs.f_bavail,
				(unsigned long long)v->sfs.f_files,
				(unsigned long long)v->sfs.f_ffree,
				(long)v->sfs.f_namelen, (unsigned long)v->sfs.f_flags);
			fclose(f);
		}
		free(rel);
	} else {
		missing(r, dir, "statfs %s: %s", v->path, strerror(errno));
	}
	rel = xasprintf("%s/mountinfo", dir);
	gather_mountinfo(r, rel, v);
	free(rel);
	rel = xasprintf("%s/host", dir);
	gather_block_geometry(r, rel, major(v->st.st_dev), minor(v->st.st_dev));
	free(rel);
}

static char *timestamp(const char *fmt)
{
	char buf[64];
	time_t now = time(NULL);
	struct tm tm;

	localtime_r(&now, &tm);
	strftime(buf, sizeof(buf), fmt, &tm);
	return xstrdup(buf);
}

/* Archive member names: keep them to a safe alphabet. */
static char *safe_name(const char *s)
{
	char *out = xstrdup(*s ? s : "device"), *p;

	if (!strncmp(out, "/dev/", 5))
		memmove(out, out + 5, strlen(out + 5) + 1);
	for (p = out; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
			*p = '_';
	return out;
}

static int remove_one(const char *path, const struct stat *st, int flag,
		      struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static const struct dm_device *find_dm(const struct dm_device_list *l,
				       const char *arg, const char *name,
				       bool have_minor, unsigned int minor)
{
	const char *bare = strncmp(arg, "/dev/mapper/", 12) ? arg : arg + 12;

	for (size_t i = 0; i < l->n; i++) {
		const struct dm_device *d = &l->v[i];

		if ((have_minor && d->minor == minor) ||
		    (name && !strcmp(d->name, name)) || !strcmp(d->name, bare))
			return d;
	}
	return NULL;
}

static void write_summary(struct report *r, const char *label,
			  struct target_view *v, size_t nv, const char *verdict,
			  const char *module_version, size_t log_lines)
{
	FILE *f = open_out(r, "SUMMARY");
	char *when = timestamp("%Y-%m-%d %H:%M:%S %z");
	char *uname_path = xasprintf("%s/uname", r->top), *uname = NULL;

	if (!f)
		goto out;
	if (read_text_file(uname_path, &uname, NULL) == 0)
		uname[strcspn(uname, "\n")] = '\0';
	fprintf(f, "dm-loop report by " PROGNAME " " DMLOOP_INSPECT_VERSION ", %s\n\n",
		when);
	fprintf(f, "device:      %s\n", label);
	fprintf(f, "kernel:      %s\n", uname ? uname : "?");
	fprintf(f, "dm_loop:     %s\n", module_version ? module_version : "not loaded");
	for (size_t i = 0; i < nv; i++) {
		struct target_view *t = &v[i];

		fprintf(f, "\ntarget:      sectors %" PRIu64 "..%" PRIu64 "%s%s%s\n",
			t->start, t->start + t->sectors,
			t->instance ? " (debugfs " : "",
			t->instance ? t->instance : "", t->instance ? ")" : "");
		fprintf(f, "mode:        %s", t->mode ? t->mode : "?");
		if (t->reason && strcmp(t->reason, "-"))
			fprintf(f, ", reason %s", t->reason);
		fputc('\n', f);
		fprintf(f, "file:        %s, offset %" PRIu64, t->path ? t->path : "?",
			t->offset);
		if (t->have_stat)
			fprintf(f, ", inode %lu, size %lld", (unsigned long)t->st.st_ino,
				(long long)t->st.st_size);
		fputc('\n', f);
		if (t->have_statfs) {
			const char *fs = fs_type_name((unsigned long)t->sfs.f_type);

			fprintf(f, "filesystem:  %s on %u:%u, block size %ld",
				t->fs_name ? t->fs_name : fs ? fs : "?",
				major(t->st.st_dev), minor(t->st.st_dev),
				(long)t->sfs.f_bsize);
			if (t->mount_point)
				fprintf(f, ", mounted on %s (%s)", t->mount_point,
					t->mount_opts);
			fputc('\n', f);
		}
		fprintf(f, "extents:     %s%s%s\n", t->extents ? t->extents : "?",
			t->host ? " on host " : "", t->host ? t->host : "");
		if (t->states)
			fprintf(f, "states:      %s\n", t->states);
	}
	fprintf(f, "\ncomparison:  %s\n", verdict);
	fprintf(f, "kernel log:  %zu dm-loop line%s (kernel-log)\n", log_lines,
		log_lines == 1 ? "" : "s");
	fprintf(f, "missing:     %zu part%s%s\n", r->nmissing,
		r->nmissing == 1 ? "" : "s", r->nmissing ? ":" : "");
	if (r->nmissing) {
		fflush(r->missing);
		for (const char *p = r->missing_text; p && *p;) {
			const char *nl = strchr(p, '\n');
			size_t len = nl ? (size_t)(nl - p) : strlen(p);

			fprintf(f, "  %.*s\n", (int)len, p);
			p += len + (nl != NULL);
		}
	}
	fclose(f);
out:
	free(when);
	free(uname_path);
	free(uname);
}

static char *default_output(const char *arg)
{
	char *safe = safe_name(arg), *when = timestamp("%Y%m%d-%H%M%S");
	char *out = xasprintf("dmloop-report-%s-%s.tar.gz", safe, when);

	free(safe);
	free(when);
	return out;
}

static int pack(struct report *r, const char *output)
{
	char *abs = NULL, cwd[PATH_MAX];
	int status = 0;
	pid_t pid;

	if (output[0] == '/')
		abs = xstrdup(output);
	else if (getcwd(cwd, sizeof(cwd)))
		abs = xasprintf("%s/%s", cwd, output);
	else {
		error("getcwd: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		error("fork: %s", strerror(errno));
		free(abs);
		return -1;
	}
	if (pid == 0) {
		char *err = xasprintf("%s/tar.err", r->tmp);
		int fd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd >= 0)
			dup2(fd, 2);
		execlp("tar", "tar", "-czf", abs, "-C", r->tmp, r->name, (char *)NULL);
		fprintf(stderr, PROGNAME ": tar: %s\n", strerror(errno));
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		char *err = xasprintf("%s/tar.err", r->tmp), *text = NULL;

		if (read_text_file(err, &text, NULL) == 0)
			text[strcspn(text, "\n")] = '\0';
		error("cannot write %s: tar failed%s%s", abs, text && *text ? ": " : "",
		      text ? text : "");
		free(text);
		free(err);
		free(abs);
		return -1;
	}
	free(abs);
	return 0;
}

static void view_from_debugfs(struct target_view *v, const struct target *t)
{
	v->start = t->inst->start;
	v->instance = t->inst->base;
	if (t->have_info) {
		v->sectors = t->info.dev_sectors;
		v->mode = t->info.mode;
		v->reason = t->info.reason;
		v->path = t->info.path;
		v->offset = t->info.offset;
		v->extents = xasprintf("%" PRIu64, t->info.extents);
	}
	if (t->have_table)
		v->host = xasprintf("%u:%u", t->table.host_major,
				    t->table.host_minor);
	if (t->have_table && t->table.version >= 2) {
		size_t holes = extent_table_count(&t->table, EXTENT_HOLE);

		v->states = xasprintf("%zu written, %zu unwritten, %zu hole%s (extents v2)",
				      extent_table_count(&t->table, EXTENT_WRITTEN),
				      extent_table_count(&t->table, EXTENT_UNWRITTEN),
				      holes, holes == 1 ? "" : "s");
	}
}

/* Without debugfs: the dm table and INFO status say most of it. */
static void view_from_dm(struct target_view *v, const struct dm_target_line *tl)
{
	char mode[16] = "", ext[24] = "";

	v->start = tl->start;
	v->sectors = tl->length;
	if (dm_loop_params(tl->params, &v->dm_path, &v->offset) == 0)
		v->path = v->dm_path;
	if (tl->status && sscanf(tl->status, "%15s %23s", mode, ext) == 2) {
		v->mode = !strcmp(mode, "block") ? "block" :
			  !strcmp(mode, "file") ? "file" : NULL;
		v->extents = xstrdup(ext);
	}
	v->reason = dm_loop_status_reason(tl->status);
}

static void view_free(struct target_view *v)
{
	free(v->extents);
	free(v->states);
	free(v->host);
	free(v->dm_path);
	free(v->mount_point);
	free(v->mount_opts);
	free(v->fs_name);
}

static int report(const char *arg, const char *output)
{
	struct report r = { 0 };
	struct device_targets dt;
	struct dm_device_list dml = { 0 };
	const struct dm_device *dmd = NULL;
	struct target_view *views = NULL;
	size_t nviews = 0, ndiff = 0, log_lines;
	bool have_dt = false, partial, have_minor = false;
	unsigned int minor = 0;
	const char *name = NULL;
	char *verdict = NULL, *module_version = NULL, *out_path, *label = NULL;
	char tmpl[PATH_MAX];
	const char *tmpdir = getenv("TMPDIR");
	int rc = EXIT_ERROR;

	out_path = output ? xstrdup(output) : default_output(arg);
	snprintf(tmpl, sizeof(tmpl), "%s/dmloop-report.XXXXXX",
		 tmpdir && *tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(tmpl)) {
		error("mkdtemp %s: %s", tmpl, strerror(errno));
		free(out_path);
		return EXIT_ERROR;
	}
	r.tmp = xstrdup(tmpl);
	{
		char *base = strrchr(out_path, '/');
		size_t len;

		base = base ? base + 1 : out_path;
		len = strlen(base);
		if (len > 7 && !strcmp(base + len - 7, ".tar.gz"))
			len -= 7;
		else if (len > 4 && !strcmp(base + len - 4, ".tgz"))
			len -= 4;
		{
			char *stem = strndup(base, len);
			char *safe = safe_name(stem && *stem ? stem : "dmloop-report");

			r.name = safe;
			free(stem);
		}
	}
	r.top = xasprintf("%s/%s", r.tmp, r.name);
	mkdir_p(r.top);
	r.missing = open_memstream(&r.missing_text, &r.missing_len);
	r.errors = open_memstream(&r.errors_text, &r.errors_len);
	if (!r.missing || !r.errors) {
		error("out of memory");
		goto cleanup;
	}
	error_capture(r.errors, true);

	gather_system(&r);
	if (read_text_file("/sys/module/dm_loop/version", &module_version, NULL) == 0)
		module_version[strcspn(module_version, "\n")] = '\0';
	else
		module_version = NULL;

	/* debugfs first: it knows the mode's reason and the extents. */
	if (device_targets_load(arg, NULL, &dt, &partial) == 0) {
		have_dt = true;
		have_minor = true;
		minor = dt.minor;
		name = dt.name;
		if (partial)
			missing_errors(&r, "debugfs", "some files did not parse");
	} else {
		missing_errors(&r, "debugfs", "no dm-loop instance of this device");
		have_minor = device_arg_minor(arg, &minor) == 0;
		free(take_errors(&r));
	}

	/* device-mapper: the tables as the kernel runs them. */
	if (dm_kernel_available() == 0) {
		missing(&r, "device-mapper", "the kernel has no device-mapper driver");
	} else if (dm_list_devices(&dml) == 0) {
		dmd = find_dm(&dml, arg, name, have_minor, minor);
		if (!dmd)
			missing(&r, "device-mapper", "no device '%s'", arg);
	} else {
		missing_errors(&r, "device-mapper", "cannot list devices");
	}
	if (dmd) {
		name = dmd->name;
		if (!have_minor)
			minor = dmd->minor;
		have_minor = true;
		gather_block_geometry(&r, "device", dmd->major, dmd->minor);
	}
	gather_dmsetup(&r, name);
	if (have_minor)
		gather_debugfs(&r, minor, !have_dt);	/* already said why not */

	if (have_dt) {
		views = xcalloc(dt.n, sizeof(*views));
		for (size_t i = 0; i < dt.n; i++)
			view_from_debugfs(&views[nviews++], &dt.t[i]);
	} else if (dmd) {
		views = xcalloc(dmd->nt ? dmd->nt : 1, sizeof(*views));
		for (size_t i = 0; i < dmd->nt; i++)
			if (!strcmp(dmd->t[i].type, "loop"))
				view_from_dm(&views[nviews++], &dmd->t[i]);
		if (nviews == 0)
			missing(&r, "targets", "%s has no loop target", dmd->name);
	}
	for (size_t i = 0; i < nviews; i++) {
		char *dir = nviews == 1 ? xstrdup("file") :
			    xasprintf("file-%" PRIu64, views[i].start);

		gather_file(&r, dir, &views[i]);
		free(take_errors(&r));	/* gather_file names what it missed */
		free(dir);
	}

	if (have_dt) {
		FILE *human = open_out(&r, "compare.txt");
		FILE *json = open_out(&r, "compare.json");
		int v = compare_device(&dt, human, json, &ndiff);

		if (human)
			fclose(human);
		if (json)
			fclose(json);
		if (v == EXIT_ERROR) {
			missing_errors(&r, "compare", "could not compare");
			verdict = xstrdup("not done: see MISSING");
		} else if (v == EXIT_DIFFER) {
			verdict = xasprintf("DIFFER: %zu difference%s between the kernel's extent table and FIEMAP (compare.txt)",
					    ndiff, ndiff == 1 ? "" : "s");
		} else {
			bool all_file = true;

			for (size_t i = 0; i < nviews; i++)
				if (!views[i].mode || strcmp(views[i].mode, "file"))
					all_file = false;
			verdict = xstrdup(all_file ? "file mode: nothing to compare" :
					  "agree: the kernel's extent table matches FIEMAP");
		}
	} else {
		missing(&r, "compare", "needs the debugfs extent table");
		verdict = xstrdup("not done: no debugfs extent table");
	}
	log_lines = gather_kernel_log(&r);

	fflush(r.missing);
	if (have_dt)
		label = xstrdup(dt.label);
	else if (dmd)
		label = xasprintf("dm-%u (%s)", dmd->minor, dmd->name);
	else
		label = xasprintf("%s (not found)", arg);
	write_summary(&r, label, views, nviews, verdict, module_version,
		      log_lines);
	if (r.nmissing)
		write_text(&r, "MISSING", r.missing_text, r.missing_len);
	else
		write_text(&r, "MISSING", "nothing: every part was gathered\n",
			   strlen("nothing: every part was gathered\n"));
	error_capture(NULL, false);

	if (pack(&r, out_path) == 0) {
		printf("%s: wrote %s (%zu part%s missing, see MISSING)\n", arg,
		       out_path, r.nmissing, r.nmissing == 1 ? "" : "s");
		rc = EXIT_OK;
	}
cleanup:
	error_capture(NULL, false);
	for (size_t i = 0; i < nviews; i++)
		view_free(&views[i]);
	free(views);
	if (have_dt)
		device_targets_free(&dt);
	dm_device_list_free(&dml);
	if (r.missing)
		fclose(r.missing);
	if (r.errors)
		fclose(r.errors);
	free(r.missing_text);
	free(r.errors_text);
	nftw(r.tmp, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	free(r.tmp);
	free(r.top);
	free(r.name);
	free(verdict);
	free(label);
	free(module_version);
	free(out_path);
	return rc;
}

int cmd_report(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "output",	required_argument,	NULL, 'o' },
		{ "help",	no_argument,		NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *output = NULL;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
		switch (c) {
		case 'o':
			output = optarg;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			return usage_error(NULL);
		}
	}
	if (optind + 1 != argc) {
		return usage_error("report: give one device");
	}
	return report(argv[optind], output);
}
