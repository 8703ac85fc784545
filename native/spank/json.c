/*
 * native/spank/json.c: request building and the strict reply scanner (see
 * json.h). The scanner refuses malformed syntax (bad numbers or escapes,
 * control characters in strings, junk after the object, nesting past 64) and
 * copies out only id, ok, error.code, error.message and result.devicesIgnored;
 * strings are decoded to UTF-8 and truncated at a character boundary to fit
 * their fields.
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

int parse_reply(const char *line, size_t len, struct reply *r)
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

