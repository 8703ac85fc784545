/*
 * test/slurm/spank-driver.c: runs the cgstep SPANK plugin's own code outside
 * Slurm, for test/slurm/client.test.ts. It #includes
 * native/spank/cgstep_spank.c, is linked with native/spank/client.c and
 * json.c, and stands in for the few libslurm functions the plugin calls, so
 * its reply parser, its socket client and its callbacks run exactly as built
 * into slurmstepd.
 *
 *   driver parse                  one reply line per stdin line -> one JSON line each
 *   driver call SOCKET MS BODY... each BODY ("\"op\":\"hello\"") on one connection,
 *                                 printing {"rc","err","us"} per call (DRV_AGENT_UID:
 *                                 the agent_uid= the client accepts besides root)
 *   driver epilog ARGS...         slurm_spank_job_epilog (job script context) with
 *                                 plugstack options ARGS; S_JOB_ID from DRV_JOB.
 *                                 Prints {"rc","errors":[...]}.
 *   driver step ARGS...           one slurmstepd's step as Slurm 22.05 runs it:
 *                                 slurm_spank_init; DRV_NTASKS (1) tasks forked, each
 *                                 running task_init_privileged and then waiting for
 *                                 the go; task_post_fork for each in this process; the
 *                                 go; the tasks reaped; slurm_spank_exit. Items from
 *                                 DRV_JOB, DRV_STEP (hex or decimal), DRV_TASK (the
 *                                 first global task id; S_JOB_LOCAL_TASK_COUNT is
 *                                 DRV_NTASKS unless DRV_NO_LOCAL_COUNT), DRV_UID, DRV_JOB_MEM,
 *                                 DRV_STEP_MEM, DRV_JOB_CORES, DRV_STEP_CORES; the
 *                                 step's environment is this process's; DRV_GRES_GPU
 *                                 (a path) is loaded first, standing in for Slurm's
 *                                 gres/gpu plugin (gres_gpu.so). A task that
 *                                 got the go runs DRV_EXEC with /bin/sh, else prints
 *                                 {"task","ran":true,"cgroup"}; one that ended itself
 *                                 prints {"rc":-1,"exited":N,"errors":[...]}. Last
 *                                 line: {"init","exit","errors":[...],"tasks":[{"task",
 *                                 "pid","exit","signal"}]}.
 */
#include <dlfcn.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

/* A failing task ends itself (_exit) in slurmstepd; here it reports first. */
static void driver_task_exit(int code);
#define CGSTEP_TASK_EXIT(code) driver_task_exit(code)

#include "cgstep_spank.c"

static char errors[64][1400];
static int nerrors;

void slurm_error(const char *fmt, ...)
{
	va_list ap;

	if (nerrors >= 64)
		return;
	va_start(ap, fmt);
	vsnprintf(errors[nerrors++], sizeof(errors[0]), fmt, ap);
	va_end(ap);
}

const char *spank_strerror(spank_err_t err)
{
	return err == ESPANK_ENV_NOEXIST ? "no such variable" : "spank error";
}

static spank_context_t context = S_CTX_REMOTE;
/* The task whose callbacks run now (-1: none) and its pid. */
static int cur_task = -1;
static pid_t cur_pid;
static int step_mode;

spank_context_t spank_context(void)
{
	return context;
}

int spank_remote(spank_t sp)
{
	return 1;
}

static const char *env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	return v ? v : dflt;
}

spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...)
{
	va_list ap;
	spank_err_t rc = ESPANK_SUCCESS;

	va_start(ap, item);
	switch (item) {
	case S_JOB_ID:
		*va_arg(ap, uint32_t *) = (uint32_t)strtoul(env_or("DRV_JOB", "1"), NULL, 0);
		break;
	case S_JOB_STEPID:
		*va_arg(ap, uint32_t *) = (uint32_t)strtoul(env_or("DRV_STEP", "0"), NULL, 0);
		break;
	case S_JOB_UID:
		*va_arg(ap, uid_t *) = (uid_t)strtoul(env_or("DRV_UID", "0"), NULL, 0);
		break;
	case S_TASK_GLOBAL_ID:
		if (cur_task < 0)
			rc = ESPANK_NOT_TASK;
		else
			*va_arg(ap, uint32_t *) = (uint32_t)strtoul(env_or("DRV_TASK", "0"), NULL, 0) + (uint32_t)cur_task;
		break;
	case S_TASK_ID:
		if (cur_task < 0)
			rc = ESPANK_NOT_TASK;
		else
			*va_arg(ap, int *) = cur_task;
		break;
	case S_JOB_LOCAL_TASK_COUNT:
		if (getenv("DRV_NO_LOCAL_COUNT"))
			rc = ESPANK_ERROR;
		else
			*va_arg(ap, uint32_t *) = (uint32_t)atoi(env_or("DRV_NTASKS", "1"));
		break;
	case S_TASK_PID:
		if (cur_task < 0)
			rc = ESPANK_NOT_TASK;
		else
			*va_arg(ap, pid_t *) = cur_pid;
		break;
	case S_JOB_ALLOC_MEM:
		*va_arg(ap, uint64_t *) = strtoull(env_or("DRV_JOB_MEM", "0"), NULL, 0);
		break;
	case S_STEP_ALLOC_MEM:
		*va_arg(ap, uint64_t *) = strtoull(env_or("DRV_STEP_MEM", "0"), NULL, 0);
		break;
	case S_JOB_ALLOC_CORES:
		if (getenv("DRV_JOB_CORES"))
			*va_arg(ap, char **) = getenv("DRV_JOB_CORES");
		else
			rc = ESPANK_NOT_AVAIL;
		break;
	case S_STEP_ALLOC_CORES:
		if (getenv("DRV_STEP_CORES"))
			*va_arg(ap, char **) = getenv("DRV_STEP_CORES");
		else
			rc = ESPANK_NOT_AVAIL;
		break;
	default:
		rc = ESPANK_BAD_ARG;
	}
	va_end(ap);
	return rc;
}

spank_err_t spank_getenv(spank_t sp, const char *var, char *buf, int len)
{
	const char *v = getenv(var);

	if (!v)
		return ESPANK_ENV_NOEXIST;
	if ((int)strlen(v) >= len)
		return ESPANK_NOSPACE;
	strcpy(buf, v);
	return ESPANK_SUCCESS;
}

static void print_str(const char *s)
{
	struct buf b = { .n = 0, .overflow = 0 };

	bput_str(&b, s);
	fputs(b.overflow ? "\"(too long)\"" : b.s, stdout);
}

static void print_errors(int rc)
{
	int i;

	printf("{\"rc\":%d,\"errors\":[", rc);
	for (i = 0; i < nerrors; i++) {
		if (i)
			putchar(',');
		print_str(errors[i]);
	}
	printf("]}\n");
}

static void driver_task_exit(int code)
{
	int i;

	printf("{\"rc\":-1,\"exited\":%d,\"errors\":[", code);
	for (i = 0; i < nerrors; i++) {
		if (i)
			putchar(',');
		print_str(errors[i]);
	}
	printf("]}\n");
	fflush(stdout);
	_exit(step_mode ? code : 0);
}

/* The forked task: its callback, then the go from the parent, then "exec". */
static void run_task(int i, int go_fd, int ac, char **av)
{
	char c, cg[4096] = "";
	const char *cmd = getenv("DRV_EXEC");
	FILE *f;

	cur_task = i;
	nerrors = 0;
	slurm_spank_task_init_privileged(NULL, ac, av);
	if (read(go_fd, &c, 1) != 1)
		_exit(1); /* as Slurm's child does when its parent gives up */
	if (cmd) {
		fflush(stdout);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	if ((f = fopen("/proc/self/cgroup", "re"))) {
		while (fgets(cg, sizeof(cg), f) && strncmp(cg, "0::", 3))
			;
		fclose(f);
	}
	cg[strcspn(cg, "\n")] = 0;
	printf("{\"task\":%d,\"ran\":true,\"cgroup\":", i);
	print_str(strncmp(cg, "0::", 3) ? "" : cg + 3);
	printf("}\n");
	fflush(stdout);
	_exit(0);
}

static int run_step(int ac, char **av)
{
	int n = atoi(env_or("DRV_NTASKS", "1")), i, rc_init, rc_exit;
	pid_t pids[64];
	int go[64][2], status[64];

	if (n < 1 || n > 64)
		return 2;
	if (getenv("DRV_GRES_GPU") && !dlopen(getenv("DRV_GRES_GPU"), RTLD_NOW)) {
		fprintf(stderr, "driver: %s\n", dlerror());
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	rc_init = slurm_spank_init(NULL, ac, av);
	for (i = 0; i < n; i++) {
		if (pipe(go[i]))
			return 2;
		fflush(stdout);
		if ((pids[i] = fork()) == 0) {
			close(go[i][1]);
			run_task(i, go[i][0], ac, av);
		}
		close(go[i][0]);
	}
	for (i = 0; i < n; i++) {
		cur_task = i;
		cur_pid = pids[i];
		slurm_spank_task_post_fork(NULL, ac, av);
	}
	cur_task = -1;
	for (i = 0; i < n; i++) {
		if (write(go[i][1], "g", 1) != 1) {
			/* a task that already ended */
		}
		close(go[i][1]);
	}
	for (i = 0; i < n; i++)
		waitpid(pids[i], &status[i], 0);
	rc_exit = slurm_spank_exit(NULL, ac, av);
	printf("{\"init\":%d,\"exit\":%d,\"errors\":[", rc_init, rc_exit);
	for (i = 0; i < nerrors; i++) {
		if (i)
			putchar(',');
		print_str(errors[i]);
	}
	printf("],\"tasks\":[");
	for (i = 0; i < n; i++)
		printf("%s{\"task\":%d,\"pid\":%d,\"exit\":%d,\"signal\":%d}", i ? "," : "", i, (int)pids[i],
		       WIFEXITED(status[i]) ? WEXITSTATUS(status[i]) : -1, WIFSIGNALED(status[i]) ? WTERMSIG(status[i]) : 0);
	printf("]}\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "parse")) {
		static char line[MAX_LINE + 2];

		while (fgets(line, sizeof(line), stdin)) {
			struct reply r;
			size_t n = strcspn(line, "\n");
			int rc = parse_reply(line, n, &r);

			printf("{\"rc\":%d,\"ok\":%d,\"id\":%lld,\"code\":", rc, r.ok, r.id);
			print_str(r.code);
			printf(",\"message\":");
			print_str(r.message);
			printf(",\"devicesIgnored\":");
			print_str(r.devices_ignored);
			printf("}\n");
			fflush(stdout);
		}
		return 0;
	}
	if (argc >= 4 && !strcmp(argv[1], "call")) {
		struct client c;
		int i, ms = atoi(argv[3]);

		if (client_open(&c, argv[2], ms, (uid_t)atoi(env_or("DRV_AGENT_UID", "0")))) {
			printf("{\"open\":-1,\"err\":");
			print_str(c.err);
			printf("}\n");
			return 0;
		}
		for (i = 4; i < argc; i++) {
			long long t0 = now_ms();
			struct timespec a, z;
			int rc;

			clock_gettime(CLOCK_MONOTONIC, &a);
			rc = client_call(&c, argv[i], ms, NULL);
			clock_gettime(CLOCK_MONOTONIC, &z);
			(void)t0;
			printf("{\"rc\":%d,\"err\":", rc);
			print_str(rc ? c.err : "");
			printf(",\"us\":%lld}\n", (long long)(z.tv_sec - a.tv_sec) * 1000000 + (z.tv_nsec - a.tv_nsec) / 1000);
			fflush(stdout);
		}
		client_close(&c);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "epilog")) {
		context = S_CTX_JOB_SCRIPT;
		print_errors(slurm_spank_job_epilog(NULL, argc - 2, argv + 2));
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "step"))
		return run_step(argc - 2, argv + 2);
	fprintf(stderr, "usage: driver parse | call SOCKET MS BODY... | epilog ARGS... | step ARGS...\n");
	return 2;
}
