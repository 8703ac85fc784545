/*
 * native/spank/cgstep_spank.c: the SPANK plugin that hands every Slurm job,
 * step and task on a node to cgstepd: its options and the SPANK callbacks.
 * The connection is client.c, the JSON json.c; this file decides what is
 * asked and when.
 *
 * plugstack.conf:
 *   required /usr/lib/slurm/cgstep_spank.so [socket=PATH] [agent_uid=UID] [timeout_ms=N]
 *            [destroy_timeout_ms=N] [failure=closed|open] [devices=yes|try|no]
 *            [cpus=auto|yes|no]
 *
 * What it does, in slurmstepd (remote context) and in slurmd's epilog; srun,
 * sbatch, salloc and slurmd proper load it but it does nothing there. Every
 * request names the job's owner (S_JOB_UID). It has no job_prolog: with one,
 * slurmd would fork and exec `slurmstepd spank prolog` before each job's first
 * step on the node, the largest part of what the plugin used to add per job.
 *   slurm_spank_init (slurmstepd, root, once per step, before its tasks are
 *     forked): records the cgroup slurmstepd started in; opens the one
 *     connection it keeps; task.place {job, step, pid: getpid(), leaf:
 *     "slurm", owner, jobLimits from S_JOB_ALLOC_MEM/CORES, stepLimits from
 *     S_STEP_ALLOC_*, jobDevices and stepDevices:{gres}} (makes the job when
 *     it is the first step here, makes the step, sets the job's limits; the
 *     extern step, which has no tasks, is done there).
 *   slurm_spank_task_init_privileged (the forked task, root, before exec):
 *     reports a step that could not be placed, ending the task (closed).
 *   slurm_spank_task_post_fork (slurmstepd, root, each task, before Slurm
 *     lets any task exec): the task's S_TASK_PID and S_TASK_GLOBAL_ID are
 *     kept; at the step's last task on this node (S_JOB_LOCAL_TASK_COUNT)
 *     task.place {job, step, tasks: [{task, pid}...], owner} places them all
 *     in one request, on the kept connection.
 *   slurm_spank_exit (once per step, after its tasks were reaped):
 *     slurmstepd leaves the step's slurm/ leaf (back to where it started),
 *     destroy {job, step, force: true, reapJob: true}.
 *   slurm_spank_job_epilog (slurmd's epilog, once per job and node):
 *     destroy {job, force: true}: whatever a step could not clean.
 * GPUs: SLURM_STEP_GPUS (SLURM_JOB_GPUS in the batch and interactive steps),
 * which slurmstepd sets from the step's signed credential, or removes, before
 * spank_init when Slurm's gres/gpu plugin is loaded (checked in
 * /proc/self/maps; without it no GPU). Each index N becomes "gpu:N" (the N-th
 * File= of gres gpu in gres.conf, which cgstepd is given with --gres). The
 * job's allocation in cgstepd is the union of what its steps here were given
 * (only root can widen it), so that a user who may reach the agent cannot
 * give its own steps a GPU Slurm did not.
 *
 * Failure policy: an unreachable agent, a timeout, an error reply or a server
 * that is not root (or agent_uid=) ends the task before exec (failure=closed,
 * the default; also when the plugin is listed as optional, where Slurm would
 * ignore a -1), and slurm_error() puts a line naming the socket and the error
 * in the job's stderr. failure=open logs the same line and lets the task run
 * unconfined. The epilog never fails (that would drain the node).
 *
 * The wire protocol is src/rpc/protocol.ts: one JSON object per line each way
 * over a Unix stream socket; replies {id, ok:true, result} or
 * {id, ok:false, error:{code, message}}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "client.h"
#include "json.h"

SPANK_PLUGIN(cgstep, 1);

#define DEFAULT_SOCKET "/run/cgstepd/cgstepd.sock"
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_DESTROY_TIMEOUT_MS 60000
#define MAX_GPUS 256
/* Slurm's MAX_TASKS_PER_NODE, and the most tasks cgstepd takes in one task.place. */
#define MAX_LOCAL_TASKS 512

/* Step ids Slurm uses for its named steps (slurm.h); checked at compile time. */
#if !defined(SLURM_BATCH_SCRIPT) || !defined(SLURM_EXTERN_CONT) || !defined(SLURM_INTERACTIVE_STEP)
#error "slurm.h lacks SLURM_BATCH_SCRIPT, SLURM_EXTERN_CONT or SLURM_INTERACTIVE_STEP"
#endif

struct config {
	char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int timeout_ms;
	int destroy_timeout_ms;
	int fail_open;
	int devices; /* DEVICES_NO, DEVICES_YES (enforced or fail), DEVICES_TRY */
	int cpus;    /* CPUS_NO, CPUS_YES, CPUS_AUTO */
	uid_t agent_uid; /* besides root, the uid cgstepd may run as (0: root only) */
};

enum { DEVICES_NO = 0, DEVICES_YES = 1, DEVICES_TRY = 2 };
enum { CPUS_NO = 0, CPUS_YES = 1, CPUS_AUTO = 2 };

/* ------------------------------------------------------------------------ */
/* options                                                                   */

static int parse_int(const char *s, int min, int max, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = (int)v;
	return 0;
}

/* The last option error, logged where it is found and repeated by each task (the job's stderr). */
static char config_err[700];

static void config_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void config_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(config_err, sizeof(config_err), fmt, ap);
	va_end(ap);
	slurm_error("%s", config_err);
}

static int parse_config(int ac, char **av, struct config *c)
{
	int i;

	memset(c, 0, sizeof(*c));
	strcpy(c->socket, DEFAULT_SOCKET);
	c->timeout_ms = DEFAULT_TIMEOUT_MS;
	c->destroy_timeout_ms = DEFAULT_DESTROY_TIMEOUT_MS;
	c->devices = DEVICES_YES;
	c->cpus = CPUS_AUTO;
	for (i = 0; i < ac; i++) {
		const char *a = av[i];
		if (!strncmp(a, "socket=", 7)) {
			if (a[7] != '/' || strlen(a + 7) >= sizeof(c->socket)) {
				config_error("cgstep: socket= needs an absolute path shorter than %zu bytes, got \"%s\"",
					    sizeof(c->socket), a + 7);
				return -1;
			}
			strcpy(c->socket, a + 7);
		} else if (!strncmp(a, "timeout_ms=", 11)) {
			if (parse_int(a + 11, 1, 3600000, &c->timeout_ms)) {
				config_error("cgstep: timeout_ms= needs 1..3600000, got \"%s\"", a + 11);
				return -1;
			}
		} else if (!strncmp(a, "destroy_timeout_ms=", 19)) {
			if (parse_int(a + 19, 1, 3600000, &c->destroy_timeout_ms)) {
				config_error("cgstep: destroy_timeout_ms= needs 1..3600000, got \"%s\"", a + 19);
				return -1;
			}
		} else if (!strncmp(a, "agent_uid=", 10)) {
			int uid;

			if (parse_int(a + 10, 0, INT_MAX, &uid)) {
				config_error("cgstep: agent_uid= needs a numeric uid, got \"%s\"", a + 10);
				return -1;
			}
			c->agent_uid = (uid_t)uid;
		} else if (!strcmp(a, "failure=closed")) {
			c->fail_open = 0;
		} else if (!strcmp(a, "failure=open")) {
			c->fail_open = 1;
		} else if (!strcmp(a, "devices=yes")) {
			c->devices = DEVICES_YES;
		} else if (!strcmp(a, "devices=try")) {
			c->devices = DEVICES_TRY;
		} else if (!strcmp(a, "devices=no")) {
			c->devices = DEVICES_NO;
		} else if (!strcmp(a, "cpus=auto")) {
			c->cpus = CPUS_AUTO;
		} else if (!strcmp(a, "cpus=yes")) {
			c->cpus = CPUS_YES;
		} else if (!strcmp(a, "cpus=no")) {
			c->cpus = CPUS_NO;
		} else {
			config_error("cgstep: unknown plugstack.conf option \"%s\" (known: socket=PATH agent_uid=UID timeout_ms=N destroy_timeout_ms=N failure=closed|open devices=yes|try|no cpus=auto|yes|no)", a);
			return -1;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Slurm items                                                                */

static int step_name(uint32_t stepid, char *out, size_t len)
{
	if (stepid == SLURM_BATCH_SCRIPT)
		snprintf(out, len, "batch");
	else if (stepid == SLURM_EXTERN_CONT)
		snprintf(out, len, "extern");
	else if (stepid == SLURM_INTERACTIVE_STEP)
		snprintf(out, len, "interactive");
	else if (stepid <= 0xfffffff0u)
		snprintf(out, len, "%" PRIu32, stepid);
	else
		return -1;
	return 0;
}

/* A cpu list "0-3,8" as the agent accepts it. */
static int valid_cpu_list(const char *s)
{
	int want_digit = 1, in_range = 0;

	if (!s || !*s || strlen(s) > 4096)
		return 0;
	for (; *s; s++) {
		if (*s >= '0' && *s <= '9') {
			want_digit = 0;
		} else if (*s == '-' && !want_digit && !in_range) {
			want_digit = 1;
			in_range = 1;
		} else if (*s == ',' && !want_digit) {
			want_digit = 1;
			in_range = 0;
		} else {
			return 0;
		}
	}
	return !want_digit;
}

/*
 * Whether Slurm's core list can be sent as a cpuset. S_*_ALLOC_CORES are
 * Slurm's abstract core numbers (task/cgroup maps them to machine CPUs with
 * hwloc); with one thread per core they are the kernel's CPU numbers, with SMT
 * they are not (core 1 is two CPUs, numbered elsewhere). auto: only when the
 * kernel reports SMT inactive.
 */
static int send_cpus(const struct config *c)
{
	char v[8] = "";
	FILE *f;

	if (c->cpus != CPUS_AUTO)
		return c->cpus == CPUS_YES;
	if (!(f = fopen("/sys/devices/system/cpu/smt/active", "re")))
		return 0;
	if (!fgets(v, sizeof(v), f))
		v[0] = 0;
	fclose(f);
	return v[0] == '0';
}

/* ,"KEY":{...} from a memory (MB) and a core list; nothing when both absent. */
static void put_limits(struct buf *b, const char *key, uint64_t mem_mb, const char *cores)
{
	int any = 0;

	if (mem_mb == 0 && !valid_cpu_list(cores))
		return;
	bput(b, ",\"%s\":{", key);
	if (valid_cpu_list(cores)) {
		bput(b, "\"cpus\":");
		bput_str(b, cores);
		any = 1;
	}
	/* The agent takes bytes up to 2^53-1: 8 PiB in MB is far below. */
	if (mem_mb > 0 && mem_mb < (UINT64_C(1) << 33))
		bput(b, "%s\"memory\":%" PRIu64, any ? "," : "", mem_mb * 1024 * 1024);
	bput(b, "}");
}

/* ,"KEY":{"gres":["gpu:N",...]}: an empty list denies every gres device. */
static void put_gres(struct buf *b, const char *key, const int *gpus, int n)
{
	int i;

	bput(b, ",\"%s\":{\"gres\":[", key);
	for (i = 0; i < n; i++)
		bput(b, "%s\"gpu:%d\"", i ? "," : "", gpus[i]);
	bput(b, "]}");
}

/*
 * A GPU index list ("0,2") from variable var into idx[]. Returns the count, 0
 * for none (empty, or Slurm's "NoDevFiles" for a gres without device files),
 * -1 (with msg) when it is not a list of indices.
 */
static int parse_gpus(const char *var, char *val, int idx[], int max, char *msg, size_t msglen)
{
	char orig[128], *p, *save = NULL, *tok;
	int n = 0;

	if (!val[0] || !strcmp(val, "NoDevFiles"))
		return 0;
	snprintf(orig, sizeof(orig), "%.120s%s", val, strlen(val) > 120 ? "..." : "");
	for (p = val; (tok = strtok_r(p, ",", &save)); p = NULL) {
		char *end;
		long v;

		while (*tok == ' ')
			tok++;
		errno = 0;
		v = strtol(tok, &end, 10);
		if (errno || end == tok || *end || v < 0 || v > 65535) {
			snprintf(msg, msglen, "%s=%s: \"%.32s\" is not a GPU index", var, orig, tok);
			return -1;
		}
		if (n >= max) {
			snprintf(msg, msglen, "%s lists more than %d GPUs", var, max);
			return -1;
		}
		idx[n++] = (int)v;
	}
	return n;
}

/*
 * Whether Slurm's gres/gpu plugin is loaded in this slurmstepd. Only then
 * has Slurm set (or cleared) the GPU variables from the step's signed
 * credential before spank_init; without it they are whatever the user's
 * environment held.
 */
static int slurm_sets_gpu_env(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[PATH_MAX + 160];
	int found = 0;

	if (!f)
		return 0;
	while (!found && fgets(line, sizeof(line), f)) {
		const char *base;

		line[strcspn(line, "\n")] = 0;
		base = strrchr(line, '/');
		found = base && !strcmp(base, "/gres_gpu.so");
	}
	fclose(f);
	return found;
}

/*
 * The step's GPUs, as Slurm's credential gives them: slurmstepd sets
 * SLURM_STEP_GPUS for a launched step (SLURM_JOB_GPUS for the batch and
 * interactive steps) from the credential before spank_init, and removes it
 * when the step has none, whatever the user exported. That holds only with
 * gres/gpu loaded; otherwise, and for the extern step, no GPU. Returns the
 * count, 0 for none, -1 (with msg).
 */
static int trusted_gpus(spank_t sp, uint32_t stepid, int idx[], int max, char *msg, size_t msglen)
{
	const char *var = (stepid == SLURM_BATCH_SCRIPT || stepid == SLURM_INTERACTIVE_STEP) ? "SLURM_JOB_GPUS" : "SLURM_STEP_GPUS";
	char val[4096];
	spank_err_t rc;

	if (stepid == SLURM_EXTERN_CONT || !slurm_sets_gpu_env())
		return 0;
	rc = spank_getenv(sp, var, val, sizeof(val));
	if (rc == ESPANK_ENV_NOEXIST)
		return 0;
	if (rc != ESPANK_SUCCESS) {
		snprintf(msg, msglen, "cannot read %s: %s", var, spank_strerror(rc));
		return -1;
	}
	return parse_gpus(var, val, idx, max, msg, msglen);
}

/* ------------------------------------------------------------------------ */
/* the cgroup slurmstepd started in, to return to before its step goes        */

static char start_cgroup[PATH_MAX];

/* This process's cgroup v2 path ("0::/..." in /proc/self/cgroup). */
static int own_cgroup(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[PATH_MAX + 64];
	int found = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, "0::", 3)) {
			line[strcspn(line, "\n")] = 0;
			if (strlen(line + 3) < len) {
				memcpy(out, line + 3, strlen(line + 3) + 1);
				found = 0;
			}
			break;
		}
	}
	fclose(f);
	return found;
}

/* The first cgroup2 mount whose root is "/" (mountinfo field 4). */
static int cgroup2_mount(char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096];
	int found = -1;

	if (!f)
		return -1;
	while (found && fgets(line, sizeof(line), f)) {
		char root[PATH_MAX], mnt[PATH_MAX];
		char *sep = strstr(line, " - ");
		char fstype[64];

		if (!sep || sscanf(sep + 3, "%63s", fstype) != 1 || strcmp(fstype, "cgroup2"))
			continue;
		if (sscanf(line, "%*s %*s %*s %4095s %4095s", root, mnt) != 2 || strcmp(root, "/"))
			continue;
		snprintf(out, len, "%s", mnt);
		found = 0;
	}
	fclose(f);
	return found;
}

static int write_pid(const char *dir, pid_t pid)
{
	char path[PATH_MAX + 32], num[32];
	int fd, n, rc = 0;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
		return -1;
	n = snprintf(num, sizeof(num), "%d\n", (int)pid);
	if (write(fd, num, (size_t)n) != n)
		rc = -1;
	close(fd);
	return rc;
}

/*
 * Before the step is destroyed (its cgroups killed and removed), slurmstepd
 * leaves the step's slurm/ leaf: back to the cgroup it started in, or else to
 * the scope's system/ (as Slurm's cgroup/v2 plugin does). 0 when it is out
 * (or never was in), -1 when it is still inside.
 */
static int leave_step_cgroup(const char *stepdir_suffix)
{
	char cur[PATH_MAX], mnt[PATH_MAX], dir[2 * PATH_MAX + 16];
	size_t cl, sl = strlen(stepdir_suffix);

	if (own_cgroup(cur, sizeof(cur)))
		return 0; /* no cgroup v2 line: nothing of ours */
	cl = strlen(cur);
	if (cl < sl || strcmp(cur + cl - sl, stepdir_suffix))
		return 0; /* not in this step's slurm/ leaf */
	if (cgroup2_mount(mnt, sizeof(mnt))) {
		slurm_error("cgstep: slurmstepd (pid %d) is in its step's cgroup %s and no cgroup2 mount was found to leave it", (int)getpid(), cur);
		return -1;
	}
	if (start_cgroup[0] && strcmp(start_cgroup, cur)) {
		snprintf(dir, sizeof(dir), "%s%s", mnt, strcmp(start_cgroup, "/") ? start_cgroup : "");
		if (!write_pid(dir, getpid()))
			return 0;
	}
	cur[cl - sl] = 0; /* the scope */
	snprintf(dir, sizeof(dir), "%s%s/system", mnt, cur);
	if (!write_pid(dir, getpid()))
		return 0;
	slurm_error("cgstep: could not move slurmstepd (pid %d) out of its step's cgroup (to %s: %s)", (int)getpid(), dir, strerror(errno));
	return -1;
}

/* ------------------------------------------------------------------------ */
/* this slurmstepd's step: one connection, kept from init to exit            */

/*
 * slurmstepd runs slurm_spank_init, forks its tasks (each runs
 * task_init_privileged, then waits for slurmstepd's go before exec), runs
 * task_post_fork for each task in the parent, then lets them exec, and runs
 * slurm_spank_exit after they were reaped (Slurm 22.05 mgr.c,
 * _fork_all_tasks: every fork, then task_post_fork for task 0 to the last in
 * order, then the go). The step is placed once, from init; the tasks all at
 * once from the last task_post_fork, in the parent, over the one connection,
 * before the go: a task never execs outside its leaf. Forked tasks inherit
 * this state: a step that could not be placed before the fork (no agent, bad
 * input) is reported by each task from task_init_privileged, where the
 * message reaches the job's stderr; one whose reply says so after the fork
 * is reported by slurmstepd at task_post_fork, which kills the tasks.
 */
static struct {
	struct config c;
	int bad_config;   /* plugstack.conf options did not parse (logged) */
	int have_ids;     /* job, stepid, step, owner read */
	int sent;         /* a request was sent: the step may exist */
	int unanswered;   /* the step's placement got no reply: the agent may still carry it out */
	/* The step's placement, sent from init and answered later (pending: its reply is unread). */
	int pending;
	long long pending_id, pending_deadline;
	struct buf step_req;
	int failed_after_fork; /* the step's placement failed once its tasks were forked: post_fork fails each */
	uint32_t job, stepid;
	char step[16];
	uid_t owner;      /* the job's uid (S_JOB_UID) */
	struct client cl; /* the kept connection; cl.fd < 0 when closed */
	/* Set when the step could not be placed: what failed and why. */
	const char *what;
	char err[1100];
	/* The tasks seen by task_post_fork and not yet placed. */
	int seen;
	int ntasks;
	pid_t pids[MAX_LOCAL_TASKS];
	uint32_t gtids[MAX_LOCAL_TASKS];
} st;

static int is_remote(spank_t sp)
{
	return spank_context() == S_CTX_REMOTE && spank_remote(sp) == 1;
}

/*
 * The task fails closed by ending itself: this runs in the forked task before
 * exec, so only the task dies (exit code 1), exactly as Slurm does after a
 * required plugin's -1; and also when plugstack.conf lists the plugin as
 * optional, where Slurm would ignore a -1 and run the command unconfined.
 */
#ifndef CGSTEP_TASK_EXIT
#define CGSTEP_TASK_EXIT(code) \
	do { \
		fflush(NULL); \
		_exit(code); \
	} while (0)
#endif

/* Report a task failure by policy: the task ends when closed; 0 (logged) when open. */
static int fail(const struct config *c, const char *what, uint32_t job, const char *step, const char *err)
{
	if (c->fail_open) {
		slurm_error("cgstep: %s for job %" PRIu32 " step %s failed (cgstepd at %s: %s); failure=open: continuing without cgroup confinement",
			    what, job, step, c->socket, err);
		return 0;
	}
	slurm_error("cgstep: %s for job %" PRIu32 " step %s failed (cgstepd at %s: %s); task not started (failure=closed)",
		    what, job, step, c->socket, err);
	CGSTEP_TASK_EXIT(1);
	return -1;
}

/* Remember why the step cannot be placed (the first reason wins). */
static void step_failed(const char *what, const char *err)
{
	if (st.what)
		return;
	st.what = what;
	snprintf(st.err, sizeof(st.err), "%.1000s", err);
}

/*
 * After a failed request on the kept connection: close it unless an error
 * reply left it usable (so that a late reply is never taken for the next
 * request's), keeping st.cl.err. 1 when the agent dropped it before replying:
 * the request may be sent again on a new one.
 */
static int kept_failed(void)
{
	int dropped = st.cl.dropped;
	char err[sizeof(st.cl.err)];

	if (st.cl.usable)
		return 0;
	memcpy(err, st.cl.err, sizeof(err));
	client_close(&st.cl);
	memcpy(st.cl.err, err, sizeof(err));
	return dropped;
}

/*
 * One request on the kept connection, opened when closed. A connection the
 * agent dropped before replying (a restart) is opened again and the request
 * sent once more: every request sent here is idempotent. 0, or -1 with
 * st.cl.err set.
 */
static int kept_call(const char *body, int timeout_ms, struct reply *r)
{
	int tries;

	for (tries = 0; tries < 2; tries++) {
		if (st.cl.fd < 0 && client_open(&st.cl, st.c.socket, st.c.timeout_ms, st.c.agent_uid))
			return -1;
		st.sent = 1;
		if (client_call(&st.cl, body, timeout_ms, r) == 0)
			return 0;
		if (!kept_failed())
			return -1;
	}
	return -1;
}

/*
 * The step, once per slurmstepd, in one request (task.place): this
 * slurmstepd goes into the step's slurm/ leaf; the job is made if this is
 * its first step here, its limits put in force and its GPU allocation widened
 * to the step's; the step is made with its limits and GPUs. Inputs are read
 * before any connection, so that a bad one is reported whether or not the
 * agent is up. The request is sent here; its reply is read by step_placed(),
 * at once for the extern step (it has no tasks) and else just before the
 * tasks are placed: the agent works while slurmstepd forks them. 0, or -1
 * after step_failed().
 */
static int place_step(spank_t sp)
{
	const struct config *c = &st.c;
	struct buf *b = &st.step_req;
	uint64_t job_mem = 0, step_mem = 0;
	char *job_cores = NULL, *step_cores = NULL, msg[1024];
	int gpus[MAX_GPUS], ngpus = 0;

	/* Allocations as Slurm reports them; absent ones are left out. */
	if (spank_get_item(sp, S_JOB_ALLOC_MEM, &job_mem) != ESPANK_SUCCESS)
		job_mem = 0;
	if (spank_get_item(sp, S_STEP_ALLOC_MEM, &step_mem) != ESPANK_SUCCESS)
		step_mem = 0;
	if (!send_cpus(c) || spank_get_item(sp, S_JOB_ALLOC_CORES, &job_cores) != ESPANK_SUCCESS)
		job_cores = NULL;
	if (!send_cpus(c) || spank_get_item(sp, S_STEP_ALLOC_CORES, &step_cores) != ESPANK_SUCCESS)
		step_cores = NULL;
	if (c->devices && (ngpus = trusted_gpus(sp, st.stepid, gpus, MAX_GPUS, msg, sizeof(msg))) < 0) {
		step_failed("reading the step's GPUs", msg);
		return -1;
	}

	memset(b, 0, sizeof(*b));
	bput(b, "\"op\":\"task.place\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\",\"pid\":%d,\"leaf\":\"slurm\",\"owner\":%u",
	     st.job, st.step, (int)getpid(), (unsigned)st.owner);
	put_limits(b, "jobLimits", job_mem, job_cores);
	put_limits(b, "stepLimits", step_mem, step_cores);
	if (c->devices) {
		put_gres(b, "jobDevices", gpus, ngpus);
		put_gres(b, "stepDevices", gpus, ngpus);
	}
	if (client_open(&st.cl, c->socket, c->timeout_ms, c->agent_uid)) {
		step_failed("placing the task", st.cl.err);
		return -1;
	}
	st.sent = 1;
	st.pending_deadline = now_ms() + c->timeout_ms;
	st.pending_id = client_send(&st.cl, b->s, st.pending_deadline);
	/* A failed send is retried (or reported) by step_placed(). */
	st.pending = 1;
	return 0;
}

/*
 * The step placement's reply (place_step), once: read when sent, the
 * request again on a new connection when the agent dropped it before
 * replying (task.place is idempotent). 0, or -1 after step_failed().
 */
static int step_placed(void)
{
	struct reply r;
	int rc = -1;

	if (!st.pending)
		return st.what ? -1 : 0;
	st.pending = 0;
	if (st.pending_id >= 0)
		rc = client_reply(&st.cl, st.pending_id, st.pending_deadline, st.c.timeout_ms, &r);
	/* A failed send, or a connection dropped before the reply: once more, on a new connection. */
	if (rc && (kept_failed() || st.pending_id < 0))
		rc = kept_call(st.step_req.s, st.c.timeout_ms, &r);
	if (rc) {
		step_failed("creating the step's cgroup", st.cl.err);
		/* An error reply keeps the connection; anything else closed it. */
		st.unanswered = st.cl.fd < 0;
		return -1;
	}
	if (st.c.devices == DEVICES_YES && r.devices_ignored[0]) {
		char msg[1024];

		snprintf(msg, sizeof(msg), "%.600s; devices=try in plugstack.conf runs tasks without device confinement", r.devices_ignored);
		step_failed("confining the step's devices", msg);
		return -1;
	}
	return 0;
}

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	memset(&st, 0, sizeof(st));
	st.cl.fd = -1;
	if (!is_remote(sp))
		return 0;
	if (own_cgroup(start_cgroup, sizeof(start_cgroup)))
		start_cgroup[0] = 0;
	/*
	 * A bad option or a failed placement is logged here (slurmd's log) but
	 * fails the step's tasks in task_init_privileged, whose message reaches
	 * the job's stderr; failing here would only show "Plugin initialization
	 * failed" with srun exit 0.
	 */
	if ((st.bad_config = parse_config(ac, av, &st.c)))
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &st.job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &st.stepid) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_UID, &st.owner) != ESPANK_SUCCESS) {
		step_failed("placing the step", "cannot read the job id, step id or job uid from Slurm");
		return 0;
	}
	if (step_name(st.stepid, st.step, sizeof(st.step))) {
		char msg[64];

		snprintf(msg, sizeof(msg), "step id 0x%" PRIx32 " has no name", st.stepid);
		snprintf(st.step, sizeof(st.step), "?");
		step_failed("placing the task", msg);
		return 0;
	}
	st.have_ids = 1;
	if (st.stepid != SLURM_EXTERN_CONT) {
		place_step(sp);
		return 0;
	}
	if (place_step(sp) == 0 && step_placed() == 0)
		return 0;
	/*
	 * The extern step (PrologFlags=contain) runs no task callbacks: its
	 * failure fails the step, which Slurm treats as a failed job launch.
	 */
	slurm_error("cgstep: %s for job %" PRIu32 " step extern failed (cgstepd at %s: %s)%s", st.what, st.job, st.c.socket,
		    st.err, st.c.fail_open ? "; failure=open: continuing without cgroup confinement" : "");
	return st.c.fail_open ? 0 : -1;
}

/* In the forked task, as root, before exec: report a step that could not be placed. */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	if (!is_remote(sp))
		return 0;
	/* The task has no use for slurmstepd's connection (it is close-on-exec anyway). */
	if (st.cl.fd >= 0)
		close(st.cl.fd);
	st.cl.fd = -1;
	if (st.bad_config) {
		slurm_error("%s", config_err);
		slurm_error("cgstep: bad options in plugstack.conf; task not started");
		CGSTEP_TASK_EXIT(1);
		return -1;
	}
	if (st.what)
		return fail(&st.c, st.what, st.job, st.have_ids ? st.step : "?", st.err);
	return 0;
}

/* The step's tasks on this node (S_JOB_LOCAL_TASK_COUNT); 1 if Slurm does not say, so that each is placed alone. */
static uint32_t local_tasks(spank_t sp)
{
	uint32_t n = 0;

	if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &n) != ESPANK_SUCCESS || n == 0 || n > MAX_LOCAL_TASKS)
		return 1;
	return n;
}

/*
 * Before a task is killed for a failure just reported: slurm_error()'s line
 * travels to srun on the step's I/O stream, the kill as the task's exit; when
 * the exit arrives first, srun prints "Killed", ends the step and drops the
 * line still on its way (seen under load). The tasks wait for slurmstepd's
 * go before exec, so holding the kill back costs only that moment, once per
 * slurmstepd, on a step that fails anyway.
 */
#define MESSAGE_LEAD_US 200000

static void let_message_out(void)
{
	static int done;

	if (!done) {
		done = 1;
		usleep(MESSAGE_LEAD_US);
	}
}

/* Report a task that may not run; 1 when it is to be killed (it waits for slurmstepd's go before exec: killed, it never runs). */
static int task_failed(pid_t pid, uint32_t gtid, const char *err)
{
	if (st.c.fail_open) {
		slurm_error("cgstep: placing task %" PRIu32 " (pid %d) for job %" PRIu32 " step %s failed (cgstepd at %s: %s); failure=open: continuing without cgroup confinement",
			    gtid, (int)pid, st.job, st.step, st.c.socket, err);
		return 0;
	}
	slurm_error("cgstep: placing task %" PRIu32 " (pid %d) for job %" PRIu32 " step %s failed (cgstepd at %s: %s); task killed before exec (failure=closed)",
		    gtid, (int)pid, st.job, st.step, st.c.socket, err);
	return 1;
}

/*
 * The step's placement failed after its tasks were forked (its reply came
 * late, or said no): one message, and each task kept so far is killed
 * before exec (failure=closed) or left to run unconfined (open).
 */
static void step_failed_after_fork(void)
{
	int i;

	slurm_error("cgstep: %s for job %" PRIu32 " step %s failed (cgstepd at %s: %s); %s", st.what, st.job, st.step, st.c.socket, st.err,
		    st.c.fail_open ? "failure=open: continuing without cgroup confinement" : "tasks killed before exec (failure=closed)");
	if (!st.c.fail_open && st.ntasks > 0) {
		let_message_out();
		for (i = 0; i < st.ntasks; i++)
			kill(st.pids[i], SIGKILL);
	}
	st.ntasks = 0;
}

/*
 * The kept tasks in one task.place, once the step's own placement has
 * succeeded; each is failed by policy if it is refused.
 */
static void place_tasks(void)
{
	struct buf b;
	int i;

	if (st.ntasks == 0)
		return;
	if (step_placed()) {
		st.failed_after_fork = 1;
		step_failed_after_fork();
		return;
	}
	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"task.place\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\",\"owner\":%u,\"tasks\":[",
	     st.job, st.step, (unsigned)st.owner);
	for (i = 0; i < st.ntasks; i++)
		bput(&b, "%s{\"task\":%" PRIu32 ",\"pid\":%d}", i ? "," : "", st.gtids[i], (int)st.pids[i]);
	bput(&b, "]");
	if (kept_call(b.s, st.c.timeout_ms, NULL)) {
		int kill_them = 0;

		for (i = 0; i < st.ntasks; i++)
			kill_them |= task_failed(st.pids[i], st.gtids[i], st.cl.err);
		if (kill_them)
			let_message_out();
		for (i = 0; kill_them && i < st.ntasks; i++)
			kill(st.pids[i], SIGKILL);
	}
	st.ntasks = 0;
}

/*
 * In slurmstepd, as root, for each forked task before any may exec: keep it,
 * and at the last one place them all in their leaves. Tasks that cannot be
 * placed are killed before they can exec (failure=closed).
 */
int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	pid_t pid = 0;
	uint32_t gtid = 0;

	if (!is_remote(sp) || st.bad_config || !st.have_ids)
		return 0;
	if (spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS || pid <= 0) {
		slurm_error("cgstep: job %" PRIu32 " step %s: no task pid from Slurm (S_TASK_PID)", st.job, st.step);
		return -1;
	}
	if (st.what && !st.failed_after_fork) {
		/* Placing the step failed before the fork: the task reports it itself (task_init_privileged). */
		return 0;
	}
	if (spank_get_item(sp, S_TASK_GLOBAL_ID, &gtid) != ESPANK_SUCCESS) {
		if (task_failed(pid, 0, "no task id from Slurm (S_TASK_GLOBAL_ID)")) {
			let_message_out();
			kill(pid, SIGKILL);
		}
	} else {
		st.pids[st.ntasks] = pid;
		st.gtids[st.ntasks++] = gtid;
	}
	if (st.failed_after_fork)
		step_failed_after_fork();
	else if (++st.seen % local_tasks(sp) == 0 || st.ntasks == MAX_LOCAL_TASKS)
		place_tasks();
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	struct buf b;
	char suffix[64];

	if (!is_remote(sp) || st.bad_config || !st.have_ids || !st.sent)
		return 0;
	/* No task was placed (none forked, say): the step's placement is settled first. */
	step_placed();
	if (st.unanswered) {
		/*
		 * A late placement (a stalled agent) could still move this slurmstepd
		 * into the step after a destroy was sent, and the destroy then kill it:
		 * the job epilog removes what such a request made.
		 */
		slurm_error("cgstep: job %" PRIu32 " step %s left for the job epilog to remove (its placement got no reply)", st.job, st.step);
		client_close(&st.cl);
		return 0;
	}
	snprintf(suffix, sizeof(suffix), "/job_%" PRIu32 "/step_%s/slurm", st.job, st.step);
	if (leave_step_cgroup(suffix)) {
		/* Destroying the step now would kill this slurmstepd: the job epilog does it. */
		slurm_error("cgstep: job %" PRIu32 " step %s left for the job epilog to remove", st.job, st.step);
		client_close(&st.cl);
		return st.c.fail_open ? 0 : -1;
	}
	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"destroy\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\",\"force\":true,\"reapJob\":true", st.job, st.step);
	if (kept_call(b.s, st.c.destroy_timeout_ms, NULL)) {
		slurm_error("cgstep: removing job %" PRIu32 " step %s failed (cgstepd at %s: %s); its cgroups stay until the job epilog or cgstepd removes them",
			    st.job, st.step, st.c.socket, st.cl.err);
		client_close(&st.cl);
		return st.c.fail_open ? 0 : -1;
	}
	client_close(&st.cl);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* slurmd's epilog, once per job and node                                     */

/* One request on its own connection; a failure is logged ("removing" job N at its "epilog" failed), never returned. */
static void call_once(const struct config *c, const char *body, int timeout_ms, const char *doing, uint32_t job, const char *when)
{
	struct client cl;

	if (client_open(&cl, c->socket, c->timeout_ms, c->agent_uid) || client_call(&cl, body, timeout_ms, NULL))
		slurm_error("cgstep: %s job %" PRIu32 " at its %s failed (cgstepd at %s: %s)", doing, job, when, c->socket, cl.err);
	client_close(&cl);
}

/*
 * Once per job on this node, after its last step (slurmd's epilog, as root):
 * destroy the job. Normally its last step's exit already removed it; this
 * catches a job directory a step could not clean (a request the agent only
 * carried out after the plugin had given up on it, a step that failed before
 * its exit ran). Never fails the epilog: that would drain the node.
 */
int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	struct config c;
	struct buf b;
	uint32_t job = 0;

	if (spank_context() != S_CTX_JOB_SCRIPT)
		return 0;
	if (parse_config(ac, av, &c))
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
		return 0;
	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"destroy\",\"job\":\"%" PRIu32 "\",\"force\":true", job);
	call_once(&c, b.s, c.destroy_timeout_ms, "removing", job, "epilog");
	return 0;
}
