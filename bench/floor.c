/*
 * bench/floor.c: the kernel floor for one step cycle, no daemon in the way.
 *
 * Exactly the syscalls cgstepd makes for: create job + step (mkdir, enable
 * controllers in cgroup.subtree_control at each inner level, slurm/ and user/),
 * attach a running pid to user/task_0 (mkdir, cgroup.procs, read back
 * /proc/PID/cgroup), load and attach a device program (when a program file is
 * given), move the pid out to a parking cgroup, and rmdir bottom-up.
 *
 *   floor SCOPE_DIR PARK_DIR PID CYCLES CONTROLLERS [PROGRAM.bin [once]]
 * prints one line per cycle: the cycle time in nanoseconds. With `once`, the
 * program is loaded before the first cycle and only attached in each, as the
 * agent does since it keeps the programs it loaded for reuse by the same policy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what, const char *path)
{
	fprintf(stderr, "floor: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

static void put(const char *dir, const char *file, const char *val)
{
	char p[4096];
	snprintf(p, sizeof p, "%s/%s", dir, file);
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", p);
	if (write(fd, val, strlen(val)) < 0)
		die("write", p);
	close(fd);
}

static void get(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", path);
	ssize_t r = read(fd, buf, n - 1);
	if (r < 0)
		die("read", path);
	buf[r] = 0;
	close(fd);
}

static void mk(const char *p)
{
	if (mkdir(p, 0755) < 0 && errno != EEXIST)
		die("mkdir", p);
}

static void rm(const char *p)
{
	if (rmdir(p) < 0 && errno != ENOENT)
		die("rmdir", p);
}

static int bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int load(const char *prog, size_t len, const char *path)
{
	union bpf_attr a;
	memset(&a, 0, sizeof a);
	a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
	a.insns = (unsigned long)prog;
	a.insn_cnt = len / 8;
	a.license = (unsigned long)"GPL";
	a.expected_attach_type = BPF_CGROUP_DEVICE;
	int fd = bpf(BPF_PROG_LOAD, &a);
	if (fd < 0)
		die("BPF_PROG_LOAD", path);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: floor SCOPE PARK PID CYCLES CONTROLLERS [PROGRAM.bin]\n");
		return 2;
	}
	const char *scope = argv[1], *park = argv[2], *pid = argv[3], *ctl = argv[5];
	int cycles = atoi(argv[4]);
	char *prog = NULL;
	size_t prog_len = 0;
	int kept = -1; /* with `once`: the one loaded program */
	if (argc > 6) {
		FILE *f = fopen(argv[6], "rb");
		if (!f)
			die("open", argv[6]);
		prog = malloc(1 << 20);
		prog_len = fread(prog, 1, 1 << 20, f);
		fclose(f);
		if (argc > 7 && !strcmp(argv[7], "once"))
			kept = load(prog, prog_len, argv[6]);
	}
	char job[4096], step[4096], slurm[4096], user[4096], task[4096], procpath[64], buf[4096];
	snprintf(procpath, sizeof procpath, "/proc/%s/cgroup", pid);
	for (int i = 0; i < cycles; i++) {
		long long t0 = now_ns();
		snprintf(job, sizeof job, "%s/job_%d", scope, 900000 + i);
		snprintf(step, sizeof step, "%s/step_0", job);
		snprintf(slurm, sizeof slurm, "%s/slurm", step);
		snprintf(user, sizeof user, "%s/user", step);
		snprintf(task, sizeof task, "%s/task_0", user);
		mk(job);
		if (*ctl)
			put(job, "cgroup.subtree_control", ctl);
		mk(step);
		if (*ctl)
			put(step, "cgroup.subtree_control", ctl);
		mk(slurm);
		mk(user);
		if (*ctl)
			put(user, "cgroup.subtree_control", ctl);
		mk(task);
		put(task, "cgroup.procs", pid);
		get(procpath, buf, sizeof buf);
		if (prog) {
			union bpf_attr a;
			int pfd = kept >= 0 ? kept : load(prog, prog_len, argv[6]);
			int cfd = open(user, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (cfd < 0)
				die("open", user);
			memset(&a, 0, sizeof a);
			a.target_fd = cfd;
			a.attach_bpf_fd = pfd;
			a.attach_type = BPF_CGROUP_DEVICE;
			a.attach_flags = BPF_F_ALLOW_MULTI;
			if (bpf(BPF_PROG_ATTACH, &a) < 0)
				die("BPF_PROG_ATTACH", user);
			if (pfd != kept)
				close(pfd);
			close(cfd);
		}
		put(park, "cgroup.procs", pid);
		rm(task);
		rm(user);
		rm(slurm);
		rm(step);
		rm(job);
		printf("%lld\n", now_ns() - t0);
	}
	return 0;
}
