/*
 * native/spank/cgstep_spank.c: the SPANK plugin that hands every Slurm job,
 * step and task on a node to cgstepd (owned by the Slurm integration, issue 8;
 * this file, the Makefile and README.md beside it are all it owns).
 *
 * plugstack.conf:
 *   required /usr/lib/slurm/cgstep_spank.so [socket=PATH] [timeout_ms=N]
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
 * {id, ok:false, error:{code, message}}. No JSON library: requests are built
 * with escaped strings, replies are scanned by a small strict parser.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(cgstep, 1);

#define DEFAULT_SOCKET "/run/cgstepd/cgstepd.sock"
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_DESTROY_TIMEOUT_MS 60000
#define MAX_LINE (64 * 1024)       /* the agent's MAX_LINE_BYTES */
#define REQ_MAX 8192
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
			slurm_error("cgstep: unknown plugstack.conf option \"%s\" (known: socket=PATH timeout_ms=N destroy_timeout_ms=N failure=closed|open devices=yes|try|no cpus=auto|yes|no)", a);
			return -1;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* a growable-free request buffer with JSON string escaping                  */

struct buf {
	char s[REQ_MAX];
	size_t n;
	int overflow;
};

static void bput(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bput(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int w;

	if (b->overflow)
		return;
	va_start(ap, fmt);
	w = vsnprintf(b->s + b->n, sizeof(b->s) - b->n, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= sizeof(b->s) - b->n)
		b->overflow = 1;
	else
		b->n += (size_t)w;
}

/* Append s as a JSON string literal (quotes included). */
static void bput_str(struct buf *b, const char *s)
{
	const unsigned char *p;

	bput(b, "\"");
	for (p = (const unsigned char *)s; *p && !b->overflow; p++) {
		if (*p == '"' || *p == '\\')
			bput(b, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			bput(b, "\\u%04x", *p);
		else
			bput(b, "%c", *p);
	}
	bput(b, "\"");
}

/* ------------------------------------------------------------------------ */
/* reply scanning: a strict little JSON reader for {id, ok, result|error}    */

struct reply {
	int ok;              /* 1, 0, or -1 when absent */
	long long id;        /* -1 when absent or not a number */
	char code[64];
	char message[1024];
	/* result.devicesIgnored: the agent took device rules it cannot enforce. */
	char devices_ignored[512];
};

struct scan {
	const char *p, *end;
	int depth;
};

static void ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

static int hex4(const char *p, const char *end, unsigned *cp)
{
	int i, h;

	if (end - p < 4)
		return -1;
	*cp = 0;
	for (i = 0; i < 4; i++) {
		if ((h = hexval(p[i])) < 0)
			return -1;
		*cp = *cp * 16 + (unsigned)h;
	}
	return 0;
}

/* Code point -> UTF-8 in tmp; returns the length. */
static int utf8(unsigned cp, char *tmp)
{
	if (cp < 0x80) {
		tmp[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		tmp[0] = (char)(0xc0 | (cp >> 6));
		tmp[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		tmp[0] = (char)(0xe0 | (cp >> 12));
		tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		tmp[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	tmp[0] = (char)(0xf0 | (cp >> 18));
	tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	tmp[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/*
 * Read a string; copy it into out (when out): escapes decoded to UTF-8 (a
 * surrogate pair to its character, a lone surrogate or NUL to U+FFFD), truncated
 * at a character boundary to fit outlen with its NUL.
 */
static int scan_string(struct scan *s, char *out, size_t outlen)
{
	size_t n = 0;

	if (s->p >= s->end || *s->p != '"')
		return -1;
	s->p++;
	while (s->p < s->end && *s->p != '"') {
		unsigned char c = (unsigned char)*s->p;
		unsigned cp, lo;
		char tmp[4];
		int tl = 0;

		if (c < 0x20)
			return -1;
		if (c != '\\') {
			/* A raw UTF-8 sequence is kept whole. */
			int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;

			if (s->end - s->p < len)
				return -1;
			memcpy(tmp, s->p, (size_t)len);
			tl = len;
			s->p += len;
		} else {
			s->p++;
			if (s->p >= s->end)
				return -1;
			switch (*s->p) {
			case '"': case '\\': case '/': tmp[tl++] = *s->p; break;
			case 'b': tmp[tl++] = '\b'; break;
			case 'f': tmp[tl++] = '\f'; break;
			case 'n': tmp[tl++] = '\n'; break;
			case 'r': tmp[tl++] = '\r'; break;
			case 't': tmp[tl++] = '\t'; break;
			case 'u':
				if (hex4(s->p + 1, s->end, &cp))
					return -1;
				s->p += 4;
				if (cp >= 0xd800 && cp <= 0xdbff && s->end - s->p >= 7 && s->p[1] == '\\' && s->p[2] == 'u' &&
				    !hex4(s->p + 3, s->end, &lo) && lo >= 0xdc00 && lo <= 0xdfff) {
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					s->p += 6;
				} else if ((cp >= 0xd800 && cp <= 0xdfff) || cp == 0) {
					cp = 0xfffd; /* and NUL, which would end the C string */
				}
				tl = utf8(cp, tmp);
				break;
			default:
				return -1;
			}
			s->p++;
		}
		if (out && n + (size_t)tl < outlen) {
			memcpy(out + n, tmp, (size_t)tl);
			n += (size_t)tl;
		} else if (out) {
			outlen = n + 1; /* full: keep nothing more, not even a shorter character */
		}
	}
	if (s->p >= s->end)
		return -1;
	s->p++;
	if (out && outlen)
		out[n] = 0;
	return 0;
}

static int scan_literal(struct scan *s, const char *lit)
{
	size_t l = strlen(lit);

	if ((size_t)(s->end - s->p) < l || memcmp(s->p, lit, l))
		return -1;
	s->p += l;
	return 0;
}

static int digits(struct scan *s)
{
	const char *start = s->p;

	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > start ? 0 : -1;
}

/* A JSON number; *out gets its value when it is an integer that fits, else -1. */
static int scan_number(struct scan *s, long long *out)
{
	const char *start = s->p;
	int integral = 1;
	char tmp[24];

	if (s->p < s->end && *s->p == '-')
		s->p++;
	if (s->p < s->end && *s->p == '0')
		s->p++;
	else if (digits(s))
		return -1;
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		integral = 0;
		if (digits(s))
			return -1;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		integral = 0;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (digits(s))
			return -1;
	}
	if (out) {
		*out = -1;
		if (integral && (size_t)(s->p - start) < sizeof(tmp) - 1) {
			memcpy(tmp, start, (size_t)(s->p - start));
			tmp[s->p - start] = 0;
			errno = 0;
			*out = strtoll(tmp, NULL, 10);
			if (errno)
				*out = -1;
		}
	}
	return 0;
}

static int skip_value(struct scan *s);

static int skip_container(struct scan *s, char open, char close)
{
	int first = 1;

	if (++s->depth > 64)
		return -1;
	s->p++; /* open */
	(void)open;
	for (;;) {
		ws(s);
		if (s->p >= s->end)
			return -1;
		if (*s->p == close) {
			s->p++;
			s->depth--;
			return 0;
		}
		if (!first) {
			if (*s->p != ',')
				return -1;
			s->p++;
			ws(s);
		}
		first = 0;
		if (close == '}') {
			if (scan_string(s, NULL, 0))
				return -1;
			ws(s);
			if (s->p >= s->end || *s->p != ':')
				return -1;
			s->p++;
			ws(s);
		}
		if (skip_value(s))
			return -1;
	}
}

static int skip_value(struct scan *s)
{
	ws(s);
	if (s->p >= s->end)
		return -1;
	switch (*s->p) {
	case '"': return scan_string(s, NULL, 0);
	case '{': return skip_container(s, '{', '}');
	case '[': return skip_container(s, '[', ']');
	case 't': return scan_literal(s, "true");
	case 'f': return scan_literal(s, "false");
	case 'n': return scan_literal(s, "null");
	default: return scan_number(s, NULL);
	}
}

/*
 * An object whose string members named k1/k2 are copied to v1/v2 (when not
 * NULL); every other member is skipped. A non-object value is skipped.
 */
static int scan_members(struct scan *s, const char *k1, char *v1, size_t l1, const char *k2, char *v2, size_t l2)
{
	int first = 1;

	ws(s);
	if (s->p >= s->end || *s->p != '{')
		return skip_value(s);
	s->p++;
	for (;;) {
		char key[32];

		ws(s);
		if (s->p < s->end && *s->p == '}') {
			s->p++;
			return 0;
		}
		if (!first) {
			if (s->p >= s->end || *s->p != ',')
				return -1;
			s->p++;
			ws(s);
		}
		first = 0;
		if (scan_string(s, key, sizeof(key)))
			return -1;
		ws(s);
		if (s->p >= s->end || *s->p != ':')
			return -1;
		s->p++;
		ws(s);
		if (k1 && !strcmp(key, k1) && s->p < s->end && *s->p == '"') {
			if (scan_string(s, v1, l1))
				return -1;
		} else if (k2 && !strcmp(key, k2) && s->p < s->end && *s->p == '"') {
			if (scan_string(s, v2, l2))
				return -1;
		} else if (skip_value(s)) {
			return -1;
		}
	}
}

/* Parse one reply line. 0 when it is a well-formed object with a boolean ok. */
static int parse_reply(const char *line, size_t len, struct reply *r)
{
	struct scan s = { line, line + len, 0 };
	int first = 1;

	memset(r, 0, sizeof(*r));
	r->ok = -1;
	r->id = -1;
	ws(&s);
	if (s.p >= s.end || *s.p != '{')
		return -1;
	s.p++;
	for (;;) {
		char key[32];

		ws(&s);
		if (s.p < s.end && *s.p == '}') {
			s.p++;
			break;
		}
		if (!first) {
			if (s.p >= s.end || *s.p != ',')
				return -1;
			s.p++;
			ws(&s);
		}
		first = 0;
		if (scan_string(&s, key, sizeof(key)))
			return -1;
		ws(&s);
		if (s.p >= s.end || *s.p != ':')
			return -1;
		s.p++;
		ws(&s);
		if (!strcmp(key, "ok")) {
			if (!scan_literal(&s, "true"))
				r->ok = 1;
			else if (!scan_literal(&s, "false"))
				r->ok = 0;
			else
				return -1;
		} else if (!strcmp(key, "id") && s.p < s.end && (*s.p == '-' || (*s.p >= '0' && *s.p <= '9'))) {
			if (scan_number(&s, &r->id))
				return -1;
		} else if (!strcmp(key, "error")) {
			if (scan_members(&s, "code", r->code, sizeof(r->code), "message", r->message, sizeof(r->message)))
				return -1;
		} else if (!strcmp(key, "result")) {
			if (scan_members(&s, "devicesIgnored", r->devices_ignored, sizeof(r->devices_ignored), NULL, NULL, 0))
				return -1;
		} else if (skip_value(&s)) {
			return -1;
		}
	}
	ws(&s);
	if (s.p != s.end || r->ok < 0)
		return -1;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* the client: one connection, request lines out, reply lines back           */

struct client {
	int fd;
	const char *socket;
	long long next_id;
	char in[MAX_LINE + 1];
	size_t in_len;
	char err[1200];
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd p = { fd, events, 0 };
		long long left = deadline - now_ms();
		int rc;

		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		rc = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (rc > 0)
			return 0;
		if (rc == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

static int client_open(struct client *c, const char *path, int timeout_ms)
{
	struct sockaddr_un sa;
	long long deadline = now_ms() + timeout_ms;
	int delay_ms = 1;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->socket = path;
	c->next_id = 1;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(c->err, sizeof(c->err), "socket path too long");
		return -1;
	}
	strcpy(sa.sun_path, path);
	for (;;) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			snprintf(c->err, sizeof(c->err), "socket(): %s", strerror(errno));
			return -1;
		}
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			c->fd = fd;
			return 0;
		}
		if (errno == EINPROGRESS) {
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (wait_fd(fd, POLLOUT, deadline) == 0 &&
			    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
				c->fd = fd;
				return 0;
			}
			if (soerr)
				errno = soerr;
		}
		/* A full listen backlog: back off and retry within the deadline. */
		if (errno == EAGAIN && now_ms() + delay_ms < deadline) {
			close(fd);
			usleep((useconds_t)delay_ms * 1000);
			delay_ms = delay_ms < 128 ? delay_ms * 2 : 250;
			continue;
		}
		snprintf(c->err, sizeof(c->err), "cannot connect: %s%s", strerror(errno),
			 errno == ENOENT || errno == ECONNREFUSED ? " (is cgstepd running?)" : "");
		close(fd);
		return -1;
	}
}

static void client_close(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/*
 * Send one request (a JSON object body without braces' id: "op":...,...) and
 * read its reply. Returns 0 for ok:true, -1 otherwise with c->err set.
 */
static int client_call(struct client *c, const char *body, int timeout_ms, struct reply *rp)
{
	struct buf req = { .n = 0, .overflow = 0 };
	long long id = c->next_id++;
	long long deadline = now_ms() + timeout_ms;
	size_t off = 0;
	char *nl;
	struct reply local;
	struct reply *r = rp ? rp : &local;

	bput(&req, "{\"v\":\"1.0\",\"id\":%lld,%s}\n", id, body);
	if (req.overflow) {
		snprintf(c->err, sizeof(c->err), "request too long");
		return -1;
	}
	while (off < req.n) {
		ssize_t w = send(c->fd, req.s + off, req.n - off, MSG_NOSIGNAL);
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(c->fd, POLLOUT, deadline) == 0)
				continue;
			snprintf(c->err, sizeof(c->err), "sending the request: %s", errno == ETIMEDOUT ? "timed out" : strerror(errno));
			return -1;
		}
		snprintf(c->err, sizeof(c->err), "sending the request: %s", strerror(errno));
		return -1;
	}
	for (;;) {
		ssize_t got;

		if ((nl = memchr(c->in, '\n', c->in_len)))
			break;
		if (c->in_len >= MAX_LINE) {
			snprintf(c->err, sizeof(c->err), "reply line longer than %d bytes", MAX_LINE);
			return -1;
		}
		got = recv(c->fd, c->in + c->in_len, MAX_LINE - c->in_len, 0);
		if (got > 0) {
			c->in_len += (size_t)got;
			continue;
		}
		if (got == 0) {
			snprintf(c->err, sizeof(c->err), "cgstepd closed the connection before replying");
			return -1;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(c->fd, POLLIN, deadline) == 0)
				continue;
			if (errno == ETIMEDOUT)
				snprintf(c->err, sizeof(c->err), "no reply within %d ms", timeout_ms);
			else
				snprintf(c->err, sizeof(c->err), "waiting for the reply: %s", strerror(errno));
			return -1;
		}
		snprintf(c->err, sizeof(c->err), "reading the reply: %s", strerror(errno));
		return -1;
	}
	{
		size_t linelen = (size_t)(nl - c->in);
		int bad = parse_reply(c->in, linelen, r);

		memmove(c->in, nl + 1, c->in_len - linelen - 1);
		c->in_len -= linelen + 1;
		if (bad) {
			snprintf(c->err, sizeof(c->err), "malformed reply from cgstepd");
			return -1;
		}
	}
	if (r->ok == 1 && r->id == id)
		return 0;
	if (r->ok == 1) {
		snprintf(c->err, sizeof(c->err), "reply for request %lld while waiting for %lld", r->id, id);
		return -1;
	}
	snprintf(c->err, sizeof(c->err), "%s: %s", r->code[0] ? r->code : "error",
		 r->message[0] ? r->message : "(no message)");
	return -1;
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
	if (client_open(cl, c->socket, c->timeout_ms)) {
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

	if (client_open(&cl, c.socket, c.timeout_ms)) {
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
	if (client_open(&cl, c.socket, c.timeout_ms)) {
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
