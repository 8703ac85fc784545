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
 *   driver task ARGS...           slurm_spank_task_init_privileged with plugstack
 *                                 options ARGS; items from DRV_JOB, DRV_STEP (hex or
 *                                 decimal), DRV_TASK, DRV_LTASK, DRV_JOB_MEM,
 *                                 DRV_STEP_MEM, DRV_JOB_CORES, DRV_STEP_CORES; the
 *                                 task environment is this process's. Prints
 *                                 {"rc", "errors":[...]}, with "exited":N when the
 *                                 task would have ended itself (_exit(N)).
 *   driver exit ARGS...           slurm_spank_exit likewise.
 */
#include <stdarg.h>
#include <stdio.h>
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

spank_context_t spank_context(void)
{
	return S_CTX_REMOTE;
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
	case S_TASK_GLOBAL_ID:
		*va_arg(ap, uint32_t *) = (uint32_t)strtoul(env_or("DRV_TASK", "0"), NULL, 0);
		break;
	case S_TASK_ID:
		*va_arg(ap, int *) = atoi(env_or("DRV_LTASK", "0"));
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
	_exit(0);
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
	if (argc >= 2 && (!strcmp(argv[1], "task") || !strcmp(argv[1], "exit"))) {
		int rc = !strcmp(argv[1], "task") ? slurm_spank_task_init_privileged(NULL, argc - 2, argv + 2)
						  : slurm_spank_exit(NULL, argc - 2, argv + 2);
		print_errors(rc);
		return 0;
	}
	fprintf(stderr, "usage: driver parse | call SOCKET MS BODY... | task ARGS... | exit ARGS...\n");
	return 2;
}
