/*
 * native/spank/json.h: the plugin's JSON, both ways, without a library:
 * requests are built into a fixed buffer with escaped strings (bput,
 * bput_str), and a reply line {id, ok, result|error} is read by a small strict
 * scanner (parse_reply) that keeps only what the plugin uses. No sockets, no
 * Slurm: client.c moves the lines, cgstep_spank.c decides what they say.
 */
#ifndef CGSTEP_SPANK_JSON_H
#define CGSTEP_SPANK_JSON_H

#include <stddef.h>

/* Internal to the plugin: never exported from the .so, never bound to a libslurm symbol. */
#pragma GCC visibility push(hidden)

/* Room for task.place with a node's most tasks (512, each about 38 bytes). */
#define REQ_MAX 32768

/* A fixed-size request buffer; overflow is sticky and checked once at the end. */
struct buf {
	char s[REQ_MAX];
	size_t n;
	int overflow;
};

void bput(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal (quotes included). */
void bput_str(struct buf *b, const char *s);

struct reply {
	int ok;              /* 1, 0, or -1 when absent */
	long long id;        /* -1 when absent or not a number */
	char code[64];
	char message[1024];
	/* result.devicesIgnored: the agent took device rules it cannot enforce. */
	char devices_ignored[512];
};

/* Parse one reply line. 0 when it is a well-formed object with a boolean ok. */
int parse_reply(const char *line, size_t len, struct reply *r);

#pragma GCC visibility pop

#endif
