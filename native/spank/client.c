/*
 * native/spank/client.c: the plugin's connection to cgstepd (see client.h):
 * a non-blocking Unix stream socket, every wait bounded by poll() against a
 * monotonic deadline, one JSON line out and one back per request, ids checked.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

long long now_ms(void)
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

/*
 * The server is cgstepd only when it runs as root or as the configured agent
 * uid: a socket path another user could have bound first (a stale or
 * misconfigured path) must not receive the job's requests. SO_PEERCRED gives
 * the credentials the server had when it called listen(), from the kernel.
 */
static int trusted_peer(struct client *c, int fd, uid_t agent_uid)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) || len != sizeof(cr)) {
		snprintf(c->err, sizeof(c->err), "cannot read the server's credentials (SO_PEERCRED): %s", strerror(errno));
		return -1;
	}
	if (cr.uid == 0 || cr.uid == agent_uid)
		return 0;
	snprintf(c->err, sizeof(c->err),
		 "refusing the server: it runs as uid %u (pid %d), not as root%s; not cgstepd, or agent_uid= in plugstack.conf must name its uid",
		 (unsigned)cr.uid, (int)cr.pid, agent_uid ? "" : " (agent_uid= unset)");
	return -1;
}

/* A connected fd becomes c->fd when its server is trusted; else it is closed. */
static int connected(struct client *c, int fd, uid_t agent_uid)
{
	if (trusted_peer(c, fd, agent_uid)) {
		close(fd);
		return -1;
	}
	c->fd = fd;
	return 0;
}

/* sun for path; -1 when it does not fit. */
static int address_of(struct sockaddr_un *sa, const char *path, const char *suffix)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) + strlen(suffix) >= sizeof(sa->sun_path))
		return -1;
	strcpy(sa->sun_path, path);
	strcat(sa->sun_path, suffix);
	return 0;
}

/* One connect() to sa, waited for until deadline: the connected fd, or -1 with errno set. */
static int connect_once(const struct sockaddr_un *sa, long long deadline)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int e;

	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
		return fd;
	if (errno == EINPROGRESS) {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (wait_fd(fd, POLLOUT, deadline) == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
			return fd;
		if (soerr)
			errno = soerr;
	}
	e = errno;
	close(fd);
	errno = e;
	return -1;
}

int client_open(struct client *c, const char *path, int timeout_ms, uid_t agent_uid)
{
	struct sockaddr_un sa;
	long long deadline = now_ms() + timeout_ms;
	int delay_ms = 1;
	int fd;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->socket = path;
	c->next_id = 1;
	/*
	 * The agent's admin socket (PATH.admin, root's and the operators') first:
	 * no other user's connections queued on the shared socket come before ours.
	 * Not there (an older agent), or not ours to open: the shared socket.
	 */
	if (address_of(&sa, path, ".admin") == 0) {
		fd = connect_once(&sa, deadline);
		if (fd >= 0)
			return connected(c, fd, agent_uid);
		if (errno != ENOENT && errno != ECONNREFUSED && errno != EACCES) {
			snprintf(c->err, sizeof(c->err), "cannot connect to %s.admin: %s", path, strerror(errno));
			return -1;
		}
	}
	if (address_of(&sa, path, "")) {
		snprintf(c->err, sizeof(c->err), "socket path too long");
		return -1;
	}
	for (;;) {
		fd = connect_once(&sa, deadline);
		if (fd >= 0)
			return connected(c, fd, agent_uid);
		/* A full listen backlog: back off and retry within the deadline. */
		if (errno == EAGAIN && now_ms() + delay_ms < deadline) {
			usleep((useconds_t)delay_ms * 1000);
			delay_ms = delay_ms < 128 ? delay_ms * 2 : 250;
			continue;
		}
		snprintf(c->err, sizeof(c->err), "cannot connect: %s%s", strerror(errno),
			 errno == ENOENT || errno == ECONNREFUSED ? " (is cgstepd running?)" : "");
		return -1;
	}
}

void client_close(struct client *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

long long client_send(struct client *c, const char *body, long long deadline)
{
	struct buf req = { .n = 0, .overflow = 0 };
	long long id = c->next_id++;
	size_t off = 0;

	c->usable = 0;
	c->dropped = 0;
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
		c->dropped = errno == EPIPE || errno == ECONNRESET;
		snprintf(c->err, sizeof(c->err), "sending the request: %s", strerror(errno));
		return -1;
	}
	return id;
}

/* Read one whole line into c->in (kept across calls): 0, or -1 with c->err set. */
static int read_line(struct client *c, long long deadline, int timeout_ms, char **nl)
{
	for (;;) {
		ssize_t got;

		if ((*nl = memchr(c->in, '\n', c->in_len)))
			return 0;
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
			c->dropped = 1;
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
		c->dropped = errno == ECONNRESET;
		snprintf(c->err, sizeof(c->err), "reading the reply: %s", strerror(errno));
		return -1;
	}
}

int client_reply(struct client *c, long long id, long long deadline, int timeout_ms, struct reply *rp)
{
	char *nl;
	struct reply local;
	struct reply *r = rp ? rp : &local;

	c->usable = 0;
	c->dropped = 0;
	if (read_line(c, deadline, timeout_ms, &nl))
		return -1;
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
	if (r->ok == 1 && r->id == id) {
		c->usable = 1;
		return 0;
	}
	if (r->ok == 1) {
		snprintf(c->err, sizeof(c->err), "reply for request %lld while waiting for %lld", r->id, id);
		return -1;
	}
	c->usable = 1;
	snprintf(c->err, sizeof(c->err), "%s: %s", r->code[0] ? r->code : "error",
		 r->message[0] ? r->message : "(no message)");
	return -1;
}

int client_call(struct client *c, const char *body, int timeout_ms, struct reply *rp)
{
	long long deadline = now_ms() + timeout_ms;
	long long id = client_send(c, body, deadline);

	if (id < 0)
		return -1;
	return client_reply(c, id, deadline, timeout_ms, rp);
}
