/*
 * native/spank/client.h: one connection to cgstepd's Unix socket: connect
 * (with a deadline, retrying a full backlog), one request line out and its
 * reply line back per call (with a deadline), lines split and kept across
 * reads. Knows the framing and the reply envelope, not what requests mean.
 */
#ifndef CGSTEP_SPANK_CLIENT_H
#define CGSTEP_SPANK_CLIENT_H

#include <sys/types.h>

#include "json.h"

#pragma GCC visibility push(hidden)

#define MAX_LINE (64 * 1024) /* the agent's MAX_LINE_BYTES */

struct client {
	int fd;
	const char *socket;
	long long next_id;
	char in[MAX_LINE + 1];
	size_t in_len;
	char err[1200];
	/* After client_call or client_reply: 1 when a whole reply was read (the connection can carry another request). */
	int usable;
	/* After client_call, client_send or client_reply: 1 when the server closed or reset the connection before replying (it restarted, say). */
	int dropped;
};

long long now_ms(void);

/*
 * Connect within timeout_ms to a server running as root or as agent_uid
 * (0: root only). 0 with c->fd open, or -1 with c->err set.
 */
int client_open(struct client *c, const char *path, int timeout_ms, uid_t agent_uid);
void client_close(struct client *c);

/*
 * Send one request (a JSON object's members without braces or id:
 * "\"op\":...,...") and read its reply. Returns 0 for ok:true, -1 otherwise
 * with c->err set. rp (when not NULL) gets the parsed reply.
 */
int client_call(struct client *c, const char *body, int timeout_ms, struct reply *rp);

/*
 * client_call in two halves, for a reply read later (the agent works while
 * the caller does): send by the deadline (now_ms() + timeout) and return the
 * request's id, or -1 with c->err set; then read the reply to that id by its
 * deadline (one already there is read even when the deadline has passed;
 * timeout_ms only words the error). Returns as client_call.
 */
long long client_send(struct client *c, const char *body, long long deadline);
int client_reply(struct client *c, long long id, long long deadline, int timeout_ms, struct reply *rp);

#pragma GCC visibility pop

#endif
