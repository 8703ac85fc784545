/*
 * native/spank/json.c: request building and the strict reply scanner (see
 * json.h). The scanner refuses malformed syntax (bad numbers or escapes,
 * control characters in strings, junk after the object, nesting past 64) and
 * copies out only id, ok, error.code, error.message and result.devicesIgnored
 * (or result.job's or result.step's); strings are decoded to UTF-8 and
 * truncated at a character boundary to fit their fields.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

void bput(struct buf *b, const char *fmt, ...)
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

void bput_str(struct buf *b, const char *s)
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

/* Called with s at a member's value, which it must consume; ctx is the caller's. */
typedef int (*member_fn)(struct scan *s, const char *key, void *ctx);

/* Called with s at an item of an object (a member) or an array (a value), which it must consume. */
typedef int (*item_fn)(struct scan *s, void *ctx);

/*
 * The items of an object or an array (s at its '{' or '['), comma-separated
 * up to close, each handed to item; nesting past 64 is refused.
 */
static int scan_items(struct scan *s, char close, item_fn item, void *ctx)
{
	int first = 1;

	if (++s->depth > 64)
		return -1;
	s->p++;
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
		if (item(s, ctx))
			return -1;
	}
}

struct members {
	member_fn fn;
	void *ctx;
};

/* One member: its key, a colon, then its value handed to the object's member_fn. */
static int member_item(struct scan *s, void *arg)
{
	const struct members *m = arg;
	char key[32];

	if (scan_string(s, key, sizeof(key)))
		return -1;
	ws(s);
	if (s->p >= s->end || *s->p != ':')
		return -1;
	s->p++;
	ws(s);
	return m->fn(s, key, m->ctx);
}

/* An object (s at its '{'), each member's value handed to fn. */
static int scan_object(struct scan *s, member_fn fn, void *ctx)
{
	struct members m = { fn, ctx };

	return scan_items(s, '}', member_item, &m);
}

static int skip_member(struct scan *s, const char *key, void *ctx)
{
	return skip_value(s);
}

static int skip_item(struct scan *s, void *ctx)
{
	return skip_value(s);
}

static int skip_value(struct scan *s)
{
	ws(s);
	if (s->p >= s->end)
		return -1;
	switch (*s->p) {
	case '"': return scan_string(s, NULL, 0);
	case '{': return scan_object(s, skip_member, NULL);
	case '[': return scan_items(s, ']', skip_item, NULL);
	case 't': return scan_literal(s, "true");
	case 'f': return scan_literal(s, "false");
	case 'n': return scan_literal(s, "null");
	default: return scan_number(s, NULL);
	}
}

static int is(const struct scan *s, char c)
{
	return s->p < s->end && *s->p == c;
}

/* error: code and message. */
static int error_member(struct scan *s, const char *key, void *ctx)
{
	struct reply *r = ctx;

	if (!strcmp(key, "code") && is(s, '"'))
		return scan_string(s, r->code, sizeof(r->code));
	if (!strcmp(key, "message") && is(s, '"'))
		return scan_string(s, r->message, sizeof(r->message));
	return skip_value(s);
}

/*
 * result: devicesIgnored, there or in result.job / result.step (a placement
 * reports each level it made); the first one found is kept.
 */
static int result_member(struct scan *s, const char *key, void *ctx)
{
	struct reply *r = ctx;

	if (!strcmp(key, "devicesIgnored") && is(s, '"'))
		return scan_string(s, r->devices_ignored[0] ? NULL : r->devices_ignored, sizeof(r->devices_ignored));
	/* Depth 2: inside result, itself inside the reply. */
	if (s->depth == 2 && (!strcmp(key, "job") || !strcmp(key, "step")) && is(s, '{'))
		return scan_object(s, result_member, r);
	return skip_value(s);
}

static int reply_member(struct scan *s, const char *key, void *ctx)
{
	struct reply *r = ctx;

	if (!strcmp(key, "ok")) {
		if (!scan_literal(s, "true"))
			r->ok = 1;
		else if (!scan_literal(s, "false"))
			r->ok = 0;
		else
			return -1;
		return 0;
	}
	if (!strcmp(key, "id") && s->p < s->end && (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')))
		return scan_number(s, &r->id);
	if (!strcmp(key, "error") && is(s, '{'))
		return scan_object(s, error_member, r);
	if (!strcmp(key, "result") && is(s, '{'))
		return scan_object(s, result_member, r);
	return skip_value(s);
}

int parse_reply(const char *line, size_t len, struct reply *r)
{
	struct scan s = { line, line + len, 0 };

	memset(r, 0, sizeof(*r));
	r->ok = -1;
	r->id = -1;
	ws(&s);
	if (!is(&s, '{') || scan_object(&s, reply_member, r))
		return -1;
	ws(&s);
	if (s.p != s.end || r->ok < 0)
		return -1;
	return 0;
}
