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
 * What it does, in slurmstepd (remote context) and the job epilog; srun,
 * sbatch, salloc and slurmd load it but it does nothing there:
 *   slurm_spank_init              records the cgroup slurmstepd started in; for
 *                                 the extern step (PrologFlags=contain, no task
 *                                 callbacks) job.create, step.create and attach
 *                                 {pid: getpid(), leaf: "slurm"}.
 *   slurm_spank_task_init_privileged (root, in the forked task before exec):
 *     job.create  {job, limits from S_JOB_ALLOC_MEM/S_JOB_ALLOC_CORES}
 *     step.create {job, step, limits from S_STEP_ALLOC_*, devices:{gres}}
 *     attach      {job, step, pid: getpid(), task: S_TASK_GLOBAL_ID}
 *     attach      {job, step, pid: getppid(), leaf: "slurm"}  (local task 0)
 *   slurm_spank_exit (once per step, after its tasks were reaped):
 *     slurmstepd leaves the step's slurm/ leaf (back to where it started),
 *     destroy {job, step, force: true, reapJob: true}.
 *   slurm_spank_job_epilog (slurmd's epilog, once per job and node):
 *     destroy {job, force: true}: whatever a step could not clean.
 * GPUs: SLURM_STEP_GPUS (else SLURM_JOB_GPUS for the batch step, else
 * CUDA_VISIBLE_DEVICES) from the task's environment; Slurm writes these for
 * the step it launches; each index N becomes "gpu:N" (the N-th File= of gres
 * gpu in gres.conf, which cgstepd is given with --gres).
 *
 * Failure policy: an unreachable agent, a timeout or an error reply ends the
 * task before exec with exit code 1 (failure=closed, the default; as Slurm
 * does for a required plugin's -1, and also when the plugin is listed as
 * optional), and slurm_error() puts a line naming the socket and the error in
 * the job's stderr. failure=open logs the same line and lets the task run
 * unconfined.
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
				slurm_error("cgstep: socket= needs an absolute path shorter than %zu bytes, got \"%s\"",
					    sizeof(c->socket), a + 7);
				return -1;
			}
			strcpy(c->socket, a + 7);
		} else if (!strncmp(a, "timeout_ms=", 11)) {
			if (parse_int(a + 11, 1, 3600000, &c->timeout_ms)) {
				slurm_error("cgstep: timeout_ms= needs 1..3600000, got \"%s\"", a + 11);
				return -1;
			}
		} else if (!strncmp(a, "destroy_timeout_ms=", 19)) {
			if (parse_int(a + 19, 1, 3600000, &c->destroy_timeout_ms)) {
				slurm_error("cgstep: destroy_timeout_ms= needs 1..3600000, got \"%s\"", a + 19);
				return -1;
			}
		} else if (!strncmp(a, "agent_uid=", 10)) {
			int uid;

			if (parse_int(a + 10, 0, INT_MAX, &uid)) {
				slurm_error("cgstep: agent_uid= needs a numeric uid, got \"%s\"", a + 10);
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
			slurm_error("cgstep: unknown plugstack.conf option \"%s\" (known: socket=PATH agent_uid=UID timeout_ms=N destroy_timeout_ms=N failure=closed|open devices=yes|try|no cpus=auto|yes|no)", a);
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

/* "limits":{...} from a memory (MB) and a core list; nothing when both absent. */
static void put_limits(struct buf *b, uint64_t mem_mb, const char *cores)
{
	int any = 0;

	if (mem_mb == 0 && !valid_cpu_list(cores))
		return;
	bput(b, ",\"limits\":{");
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

/*
 * GPU indices from the task's environment into "gpu:N" entries. Slurm sets
 * SLURM_STEP_GPUS for a step with GPUs (SLURM_JOB_GPUS in the batch step) and
 * CUDA_VISIBLE_DEVICES. Returns the count, 0 for none, -1 (with msg) when a
 * value cannot be read.
 */
static int gpus_from_env(spank_t sp, uint32_t stepid, int idx[], int max, char *msg, size_t msglen)
{
	static const char *const vars_step[] = { "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", NULL };
	static const char *const vars_batch[] = { "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", NULL };
	const char *const *vars = stepid == SLURM_BATCH_SCRIPT ? vars_batch : vars_step;
	char val[4096], orig[128];
	int i, n = 0;

	for (i = 0; vars[i]; i++) {
		spank_err_t rc = spank_getenv(sp, vars[i], val, sizeof(val));
		char *p, *save = NULL, *tok;

		if (rc == ESPANK_ENV_NOEXIST)
			continue;
		if (rc != ESPANK_SUCCESS) {
			snprintf(msg, msglen, "cannot read %s: %s", vars[i], spank_strerror(rc));
			return -1;
		}
		/* Empty, or Slurm's marker for a gres without device files. */
		if (!val[0] || !strcmp(val, "NoDevFiles"))
			continue;
		snprintf(orig, sizeof(orig), "%.120s%s", val, strlen(val) > 120 ? "..." : "");
		for (p = val; (tok = strtok_r(p, ",", &save)); p = NULL) {
			char *end;
			long v;

			while (*tok == ' ')
				tok++;
			errno = 0;
			v = strtol(tok, &end, 10);
			if (errno || end == tok || *end || v < 0 || v > 65535) {
				snprintf(msg, msglen, "%s=%s: \"%.32s\" is not a GPU index", vars[i], orig, tok);
				return -1;
			}
			if (n >= max) {
				snprintf(msg, msglen, "%s lists more than %d GPUs", vars[i], max);
				return -1;
			}
			idx[n++] = (int)v;
		}
		return n;
	}
	return 0;
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
/* callbacks                                                                  */

static int is_remote(spank_t sp)
{
	return spank_context() == S_CTX_REMOTE && spank_remote(sp) == 1;
}

/* Report a failure by policy: -1 when closed, 0 (logged) when open. */
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

static int place_extern(spank_t sp, const struct config *c);

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	struct config c;
	uint32_t stepid = 0;
	int bad;

	if (!is_remote(sp))
		return 0;
	if (own_cgroup(start_cgroup, sizeof(start_cgroup)))
		start_cgroup[0] = 0;
	/*
	 * A bad option is logged here (slurmd's log) but fails the step in
	 * task_init_privileged, whose message reaches the job's stderr; failing
	 * here would only show "Plugin initialization failed" with srun exit 0.
	 */
	bad = parse_config(ac, av, &c);
	if (spank_get_item(sp, S_JOB_STEPID, &stepid) != ESPANK_SUCCESS || stepid != SLURM_EXTERN_CONT)
		return 0;
	/* The extern step (PrologFlags=contain) runs no task callbacks: place it here. */
	return bad ? -1 : place_extern(sp, &c);
}

/*
 * Read the allocation and the GPUs (before any connection: a bad input is
 * reported whether or not the agent is up), connect, and create the job (with
 * the job's allocation) and the step (with the step's allocation and GPUs).
 * 0 with cl open, or -1 with *what and err set and cl closed.
 */
static int place_step(spank_t sp, const struct config *c, struct client *cl, uint32_t job, uint32_t stepid,
		      const char *step, const char **what, char *err, size_t errlen)
{
	struct reply r;
	struct buf b;
	uint64_t job_mem = 0, step_mem = 0;
	char *job_cores = NULL, *step_cores = NULL;
	int gpus[MAX_GPUS], ngpus = 0, i;

	/* Allocations as Slurm reports them; absent ones are left out. */
	if (spank_get_item(sp, S_JOB_ALLOC_MEM, &job_mem) != ESPANK_SUCCESS)
		job_mem = 0;
	if (spank_get_item(sp, S_STEP_ALLOC_MEM, &step_mem) != ESPANK_SUCCESS)
		step_mem = 0;
	if (!send_cpus(c) || spank_get_item(sp, S_JOB_ALLOC_CORES, &job_cores) != ESPANK_SUCCESS)
		job_cores = NULL;
	if (!send_cpus(c) || spank_get_item(sp, S_STEP_ALLOC_CORES, &step_cores) != ESPANK_SUCCESS)
		step_cores = NULL;
	if (c->devices && (ngpus = gpus_from_env(sp, stepid, gpus, MAX_GPUS, err, errlen)) < 0) {
		*what = "reading the step's GPUs";
		return -1;
	}
	if (client_open(cl, c->socket, c->timeout_ms, c->agent_uid)) {
		snprintf(err, errlen, "%.1000s", cl->err);
		return -1;
	}

	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"job.create\",\"job\":\"%" PRIu32 "\"", job);
	put_limits(&b, job_mem, job_cores);
	if (client_call(cl, b.s, c->timeout_ms, NULL)) {
		*what = "creating the job's cgroup";
		snprintf(err, errlen, "%.1000s", cl->err);
		client_close(cl);
		return -1;
	}

	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"step.create\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\"", job, step);
	put_limits(&b, step_mem, step_cores);
	if (c->devices) {
		bput(&b, ",\"devices\":{\"gres\":[");
		for (i = 0; i < ngpus; i++)
			bput(&b, "%s\"gpu:%d\"", i ? "," : "", gpus[i]);
		bput(&b, "]}");
	}
	if (client_call(cl, b.s, c->timeout_ms, &r)) {
		*what = "creating the step's cgroup";
		snprintf(err, errlen, "%.1000s", cl->err);
		client_close(cl);
		return -1;
	}
	if (c->devices == DEVICES_YES && r.devices_ignored[0]) {
		*what = "confining the step's devices";
		snprintf(err, errlen, "%.600s; devices=try in plugstack.conf runs tasks without device confinement", r.devices_ignored);
		client_close(cl);
		return -1;
	}
	return 0;
}

/* attach {job, step, pid, task | leaf} on an open connection. */
static int attach(const struct config *c, struct client *cl, uint32_t job, const char *step, pid_t pid, long task, const char *leaf)
{
	struct buf b;

	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"attach\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\",\"pid\":%d", job, step, (int)pid);
	if (leaf)
		bput(&b, ",\"leaf\":\"%s\"", leaf);
	else
		bput(&b, ",\"task\":%ld", task);
	return client_call(cl, b.s, c->timeout_ms, NULL);
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	struct config c;
	struct client cl;
	uint32_t job = 0, stepid = 0, gtid = 0;
	int ltid = -1;
	const char *what = "placing the task";
	char step[16], msg[1024];
	spank_err_t rc;

	if (!is_remote(sp))
		return 0;
	if (parse_config(ac, av, &c)) {
		slurm_error("cgstep: bad options in plugstack.conf; task not started");
		CGSTEP_TASK_EXIT(1);
		return -1;
	}
	if ((rc = spank_get_item(sp, S_JOB_ID, &job)) != ESPANK_SUCCESS ||
	    (rc = spank_get_item(sp, S_JOB_STEPID, &stepid)) != ESPANK_SUCCESS ||
	    (rc = spank_get_item(sp, S_TASK_GLOBAL_ID, &gtid)) != ESPANK_SUCCESS) {
		snprintf(msg, sizeof(msg), "reading the job, step or task id from Slurm: %s", spank_strerror(rc));
		return fail(&c, what, job, "?", msg);
	}
	if (spank_get_item(sp, S_TASK_ID, &ltid) != ESPANK_SUCCESS)
		ltid = -1;
	if (step_name(stepid, step, sizeof(step))) {
		snprintf(msg, sizeof(msg), "step id 0x%" PRIx32 " has no name", stepid);
		return fail(&c, what, job, "?", msg);
	}
	if (place_step(sp, &c, &cl, job, stepid, step, &what, msg, sizeof(msg)))
		return fail(&c, what, job, step, msg);
	/* This task: getpid() (S_TASK_PID is not set yet). */
	if (attach(&c, &cl, job, step, getpid(), (long)gtid, NULL)) {
		snprintf(msg, sizeof(msg), "%.1000s", cl.err);
		what = "placing the task";
		goto failed;
	}
	/* The step daemon (our parent), once per node: the step's slurm/ leaf. */
	if (ltid == 0 && attach(&c, &cl, job, step, getppid(), 0, "slurm")) {
		snprintf(msg, sizeof(msg), "%.1000s", cl.err);
		what = "placing slurmstepd";
		goto failed;
	}
	client_close(&cl);
	return 0;
failed:
	client_close(&cl);
	return fail(&c, what, job, step, msg);
}

/*
 * The extern step (PrologFlags=contain): slurmstepd, in slurm_spank_init,
 * creates the step and goes into its slurm/ leaf; the process that holds the
 * step open is forked after this and follows it there. Failing fails the
 * step, which Slurm treats as a failed job launch.
 */
static int place_extern(spank_t sp, const struct config *c)
{
	struct client cl;
	uint32_t job = 0;
	const char *what = "placing the extern step";
	char msg[1024];

	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
		return c->fail_open ? 0 : -1;
	if (place_step(sp, c, &cl, job, SLURM_EXTERN_CONT, "extern", &what, msg, sizeof(msg)) == 0) {
		int rc = attach(c, &cl, job, "extern", getpid(), 0, "slurm");

		snprintf(msg, sizeof(msg), "%.1000s", cl.err);
		client_close(&cl);
		if (rc == 0)
			return 0;
	}
	slurm_error("cgstep: %s for job %" PRIu32 " failed (cgstepd at %s: %s)%s", what, job, c->socket, msg,
		    c->fail_open ? "; failure=open: continuing without cgroup confinement" : "");
	return c->fail_open ? 0 : -1;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	struct config c;
	struct client cl;
	struct buf b;
	uint32_t job = 0, stepid = 0;
	char step[16], suffix[64];

	if (!is_remote(sp))
		return 0;
	if (parse_config(ac, av, &c))
		return -1;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &stepid) != ESPANK_SUCCESS ||
	    step_name(stepid, step, sizeof(step)))
		return 0; /* nothing this plugin could have created */

	snprintf(suffix, sizeof(suffix), "/job_%" PRIu32 "/step_%s/slurm", job, step);
	if (leave_step_cgroup(suffix)) {
		/* Destroying the step now would kill this slurmstepd: the job epilog does it. */
		slurm_error("cgstep: job %" PRIu32 " step %s left for the job epilog to remove", job, step);
		return c.fail_open ? 0 : -1;
	}

	if (client_open(&cl, c.socket, c.timeout_ms, c.agent_uid)) {
		slurm_error("cgstep: removing job %" PRIu32 " step %s failed (cgstepd at %s: %s); its cgroups stay until cgstepd collects them",
			    job, step, c.socket, cl.err);
		return c.fail_open ? 0 : -1;
	}
	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"destroy\",\"job\":\"%" PRIu32 "\",\"step\":\"%s\",\"force\":true,\"reapJob\":true", job, step);
	if (client_call(&cl, b.s, c.destroy_timeout_ms, NULL)) {
		slurm_error("cgstep: removing job %" PRIu32 " step %s failed (cgstepd at %s: %s)", job, step, c.socket, cl.err);
		client_close(&cl);
		return c.fail_open ? 0 : -1;
	}
	client_close(&cl);
	return 0;
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
	struct client cl;
	struct buf b;
	uint32_t job = 0;

	if (spank_context() != S_CTX_JOB_SCRIPT)
		return 0;
	if (parse_config(ac, av, &c))
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
		return 0;
	if (client_open(&cl, c.socket, c.timeout_ms, c.agent_uid)) {
		slurm_error("cgstep: removing job %" PRIu32 " at its epilog failed (cgstepd at %s: %s)", job, c.socket, cl.err);
		return 0;
	}
	memset(&b, 0, sizeof(b));
	bput(&b, "\"op\":\"destroy\",\"job\":\"%" PRIu32 "\",\"force\":true", job);
	if (client_call(&cl, b.s, c.destroy_timeout_ms, NULL))
		slurm_error("cgstep: removing job %" PRIu32 " at its epilog failed (cgstepd at %s: %s)", job, c.socket, cl.err);
	client_close(&cl);
	return 0;
}
