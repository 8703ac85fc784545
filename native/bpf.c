/*
 * cgstep_bpf: the thin N-API addon between src/devices/native.ts and the kernel
 * (and, through native/inotify.c, between src/cgroupfs/watch.ts and inotify).
 *
 * It owns the bpf() commands the device controller needs (PROG_LOAD, PROG_ATTACH,
 * PROG_DETACH, PROG_QUERY, PROG_GET_FD_BY_ID, PROG_GET_NEXT_ID,
 * OBJ_GET_INFO_BY_FD), close(), opening a cgroup directory, and the xattr calls
 * that keep a directory's policy beside its program. Numbers in, numbers out: no
 * policy lives here (which program is "ours", what to replace, when to retry an
 * attach: all of that is TypeScript). A failed call throws an Error carrying
 * `errno` (the name, e.g. "EPERM"), `errnoNumber`, `syscall` (e.g.
 * "BPF_PROG_LOAD") and, for loads, `verifierLog`.
 *
 * Every bpf_attr handed to the kernel is a full-size, zeroed union inside a
 * larger zeroed buffer: kernels since 6.17 write BPF_PROG_QUERY fields (revision)
 * that older uapi headers do not declare, and the spare tail absorbs them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "addon.h"

#define ATTR_SPARE 512
#define LOG_MIN (64u * 1024u)
#define LOG_MAX (16u * 1024u * 1024u)
#define EAGAIN_TRIES 5
#define QUERY_START 64u
#define QUERY_MAX (1u << 20)

typedef union {
	union bpf_attr a;
	unsigned char spare[sizeof(union bpf_attr) + ATTR_SPARE];
} attr_buf;

typedef union {
	struct bpf_prog_info i;
	unsigned char spare[sizeof(struct bpf_prog_info) + ATTR_SPARE];
} info_buf;

static long sys_bpf(int cmd, attr_buf *attr)
{
	return syscall(__NR_bpf, cmd, &attr->a, sizeof(attr->a));
}

/* ---- errors ------------------------------------------------------------- */

static const char *errno_name(int e)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
	const char *n = strerrorname_np(e);
	if (n)
		return n;
#endif
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENOTDIR: return "ENOTDIR";
	case EINVAL: return "EINVAL";
	case EMFILE: return "EMFILE";
	case ENOSPC: return "ENOSPC";
	case E2BIG: return "E2BIG";
	case ENOSYS: return "ENOSYS";
	case ENODATA: return "ENODATA";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ERANGE: return "ERANGE";
	default: return NULL;
	}
}

/* Throw Error("<syscall>: <ENAME> (<strerror>)") with errno/errnoNumber/syscall
 * and, when log is not NULL, verifierLog. Returns NULL for the caller to return. */
napi_value throw_errno(napi_env env, const char *sys, int e, const char *log)
{
	char numname[24];
	const char *name = errno_name(e);
	if (!name) {
		snprintf(numname, sizeof(numname), "E%d", e);
		name = numname;
	}
	char msg[256];
	snprintf(msg, sizeof(msg), "%s: %s (%s)", sys, name, strerror(e));
	napi_value jmsg, err, v;
	if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok ||
	    napi_create_error(env, NULL, jmsg, &err) != napi_ok)
		return NULL;
	napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, err, "errno", v);
	napi_set_named_property(env, err, "code", v);
	napi_create_int32(env, e, &v);
	napi_set_named_property(env, err, "errnoNumber", v);
	napi_create_string_utf8(env, sys, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, err, "syscall", v);
	if (log) {
		napi_create_string_utf8(env, log, NAPI_AUTO_LENGTH, &v);
		napi_set_named_property(env, err, "verifierLog", v);
	}
	napi_throw(env, err);
	return NULL;
}

napi_value throw_type(napi_env env, const char *msg)
{
	napi_throw_type_error(env, NULL, msg);
	return NULL;
}

/* ---- argument helpers --------------------------------------------------- */


int arg_u32(napi_env env, napi_value v, uint32_t *out)
{
	napi_valuetype t;
	double d;
	if (napi_typeof(env, v, &t) != napi_ok || t != napi_number)
		return -1;
	if (napi_get_value_double(env, v, &d) != napi_ok)
		return -1;
	if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d)
		return -1;
	*out = (uint32_t)d;
	return 0;
}

int arg_fd(napi_env env, napi_value v, int *out)
{
	uint32_t u;
	if (arg_u32(env, v, &u) || u > INT32_MAX)
		return -1;
	*out = (int)u;
	return 0;
}

static int arg_bool(napi_env env, napi_value v, int *out)
{
	bool b;
	if (napi_get_value_bool(env, v, &b) != napi_ok)
		return -1;
	*out = b;
	return 0;
}

/* A JS string copied into a malloc'ed NUL-terminated buffer (caller frees). */
char *arg_string(napi_env env, napi_value v, size_t max)
{
	size_t len;
	if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok || len > max)
		return NULL;
	char *s = malloc(len + 1);
	if (!s)
		return NULL;
	if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
		free(s);
		return NULL;
	}
	if (strlen(s) != len) { /* embedded NUL */
		free(s);
		return NULL;
	}
	return s;
}

int arg_buffer(napi_env env, napi_value v, void **data, size_t *len)
{
	bool is;
	if (napi_is_buffer(env, v, &is) != napi_ok || !is)
		return -1;
	return napi_get_buffer_info(env, v, data, len) == napi_ok ? 0 : -1;
}

napi_value num(napi_env env, double d)
{
	napi_value v;
	napi_create_double(env, d, &v);
	return v;
}

napi_value undef(napi_env env)
{
	napi_value v;
	napi_get_undefined(env, &v);
	return v;
}

/* ---- BPF_PROG_LOAD ------------------------------------------------------ */

static long prog_load_once(const struct bpf_insn *insns, uint32_t cnt, const char *name,
			   char *log, uint32_t log_size)
{
	attr_buf attr;
	memset(&attr, 0, sizeof(attr));
	attr.a.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
	attr.a.expected_attach_type = BPF_CGROUP_DEVICE;
	attr.a.insns = (uint64_t)(uintptr_t)insns;
	attr.a.insn_cnt = cnt;
	attr.a.license = (uint64_t)(uintptr_t)"GPL";
	strncpy(attr.a.prog_name, name, sizeof(attr.a.prog_name) - 1);
	if (log) {
		log[0] = 0;
		attr.a.log_buf = (uint64_t)(uintptr_t)log;
		attr.a.log_size = log_size;
		attr.a.log_level = 1;
	}
	long fd;
	int tries = 0;
	do {
		fd = sys_bpf(BPF_PROG_LOAD, &attr);
	} while (fd < 0 && errno == EAGAIN && ++tries < EAGAIN_TRIES);
	return fd;
}

/* progLoad(insns: Buffer, name: string): fd. The verifier log is asked for only
 * after a failure: the load is repeated with log_level 1 and a buffer that
 * doubles while the kernel answers ENOSPC. */
static napi_value prog_load(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	void *data;
	size_t len;
	if (argc < 2 || arg_buffer(env, argv[0], &data, &len))
		return throw_type(env, "progLoad(insns: Buffer, name: string)");
	if (len == 0 || len % sizeof(struct bpf_insn) || len / sizeof(struct bpf_insn) > UINT32_MAX)
		return throw_type(env, "progLoad: insns must be a non-empty multiple of 8 bytes");
	char *name = arg_string(env, argv[1], BPF_OBJ_NAME_LEN - 1);
	if (!name)
		return throw_type(env, "progLoad: name must be a string of at most 15 bytes");
	uint32_t cnt = (uint32_t)(len / sizeof(struct bpf_insn));

	long fd = prog_load_once(data, cnt, name, NULL, 0);
	if (fd >= 0) {
		free(name);
		return num(env, (double)fd);
	}
	int first = errno;
	if (first == EFAULT || first == ENOMEM || first == E2BIG) {
		free(name);
		return throw_errno(env, "BPF_PROG_LOAD", first, NULL);
	}
	char *log = NULL;
	int e = first;
	for (uint32_t size = LOG_MIN; size <= LOG_MAX; size *= 2) {
		char *nlog = realloc(log, size);
		if (!nlog)
			break;
		log = nlog;
		fd = prog_load_once(data, cnt, name, log, size);
		if (fd >= 0) { /* it passed this time: keep the program, drop the log */
			free(log);
			free(name);
			return num(env, (double)fd);
		}
		e = errno;
		if (e != ENOSPC)
			break;
	}
	free(name);
	if (e == ENOSPC && first != ENOSPC)
		e = first; /* the log did not fit even at LOG_MAX: report the real failure */
	napi_value r = throw_errno(env, "BPF_PROG_LOAD", e, log ? log : "");
	free(log);
	return r;
}

/* ---- attach / detach ---------------------------------------------------- */

/* The fields PROG_ATTACH and PROG_DETACH share: prog on target's device hook. */
static void attach_attr(attr_buf *attr, int target, int prog)
{
	memset(attr, 0, sizeof(*attr));
	attr->a.target_fd = (uint32_t)target;
	attr->a.attach_bpf_fd = (uint32_t)prog;
	attr->a.attach_type = BPF_CGROUP_DEVICE;
}

/* progAttach(targetFd, progFd, flags, replaceFd) */
static napi_value prog_attach(napi_env env, napi_callback_info info)
{
	GET_ARGS(4);
	int target, prog, replace;
	uint32_t flags;
	if (argc < 4 || arg_fd(env, argv[0], &target) || arg_fd(env, argv[1], &prog) ||
	    arg_u32(env, argv[2], &flags) || arg_fd(env, argv[3], &replace))
		return throw_type(env, "progAttach(targetFd, progFd, flags, replaceFd)");
	attr_buf attr;
	attach_attr(&attr, target, prog);
	attr.a.attach_flags = flags;
	attr.a.replace_bpf_fd = (uint32_t)replace;
	if (sys_bpf(BPF_PROG_ATTACH, &attr) < 0)
		return throw_errno(env, "BPF_PROG_ATTACH", errno, NULL);
	return undef(env);
}

/* progDetach(targetFd, progFd) */
static napi_value prog_detach(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	int target, prog;
	if (argc < 2 || arg_fd(env, argv[0], &target) || arg_fd(env, argv[1], &prog))
		return throw_type(env, "progDetach(targetFd, progFd)");
	attr_buf attr;
	attach_attr(&attr, target, prog);
	if (sys_bpf(BPF_PROG_DETACH, &attr) < 0)
		return throw_errno(env, "BPF_PROG_DETACH", errno, NULL);
	return undef(env);
}

/* ---- BPF_PROG_QUERY ----------------------------------------------------- */

/* progQuery(targetFd, effective: boolean): { attachFlags, ids: number[] } */
static napi_value prog_query(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	int target, effective;
	if (argc < 2 || arg_fd(env, argv[0], &target) || arg_bool(env, argv[1], &effective))
		return throw_type(env, "progQuery(targetFd, effective: boolean)");
	uint32_t cap = QUERY_START;
	uint32_t *ids = NULL;
	attr_buf attr;
	for (;;) {
		uint32_t *nids = realloc(ids, cap * sizeof(uint32_t));
		if (!nids) {
			free(ids);
			return throw_errno(env, "BPF_PROG_QUERY", ENOMEM, NULL);
		}
		ids = nids;
		memset(&attr, 0, sizeof(attr));
		attr.a.query.target_fd = (uint32_t)target;
		attr.a.query.attach_type = BPF_CGROUP_DEVICE;
		attr.a.query.query_flags = effective ? BPF_F_QUERY_EFFECTIVE : 0;
		attr.a.query.prog_ids = (uint64_t)(uintptr_t)ids;
		attr.a.query.prog_cnt = cap;
		if (sys_bpf(BPF_PROG_QUERY, &attr) == 0)
			break;
		int e = errno;
		/* ENOSPC: prog_cnt now holds the real count; ask again with room for it. */
		if (e == ENOSPC && attr.a.query.prog_cnt > cap && attr.a.query.prog_cnt <= QUERY_MAX) {
			cap = attr.a.query.prog_cnt;
			continue;
		}
		free(ids);
		return throw_errno(env, "BPF_PROG_QUERY", e, NULL);
	}
	uint32_t n = attr.a.query.prog_cnt < cap ? attr.a.query.prog_cnt : cap;
	napi_value out, arr;
	napi_create_object(env, &out);
	napi_create_array_with_length(env, n, &arr);
	for (uint32_t i = 0; i < n; i++)
		napi_set_element(env, arr, i, num(env, ids[i]));
	free(ids);
	napi_set_named_property(env, out, "attachFlags", num(env, attr.a.query.attach_flags));
	napi_set_named_property(env, out, "ids", arr);
	return out;
}

/* ---- ids and info ------------------------------------------------------- */

/* progGetFdById(id): fd */
static napi_value prog_get_fd_by_id(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	uint32_t id;
	if (argc < 1 || arg_u32(env, argv[0], &id))
		return throw_type(env, "progGetFdById(id)");
	attr_buf attr;
	memset(&attr, 0, sizeof(attr));
	attr.a.prog_id = id;
	long fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
	if (fd < 0)
		return throw_errno(env, "BPF_PROG_GET_FD_BY_ID", errno, NULL);
	return num(env, (double)fd);
}

/* progGetNextId(startId): the next loaded program id (throws ENOENT at the end) */
static napi_value prog_get_next_id(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	uint32_t id;
	if (argc < 1 || arg_u32(env, argv[0], &id))
		return throw_type(env, "progGetNextId(startId)");
	attr_buf attr;
	memset(&attr, 0, sizeof(attr));
	attr.a.start_id = id;
	if (sys_bpf(BPF_PROG_GET_NEXT_ID, &attr) < 0)
		return throw_errno(env, "BPF_PROG_GET_NEXT_ID", errno, NULL);
	return num(env, attr.a.next_id);
}

static int get_info(int fd, info_buf *ib)
{
	attr_buf attr;
	memset(&attr, 0, sizeof(attr));
	attr.a.info.bpf_fd = (uint32_t)fd;
	attr.a.info.info_len = sizeof(ib->i);
	attr.a.info.info = (uint64_t)(uintptr_t)&ib->i;
	return (int)sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

/* progInfo(fd): { id, type, name, tag (hex), xlated: Buffer, jitedLen, loadTime (ns
 * since boot, as a decimal string), createdByUid } */
static napi_value prog_info(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	int fd;
	if (argc < 1 || arg_fd(env, argv[0], &fd))
		return throw_type(env, "progInfo(fd)");
	info_buf ib;
	memset(&ib, 0, sizeof(ib));
	if (get_info(fd, &ib) < 0)
		return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", errno, NULL);
	uint32_t xlen = ib.i.xlated_prog_len;
	napi_value buf;
	void *bdata = NULL;
	if (napi_create_buffer(env, xlen, &bdata, &buf) != napi_ok)
		return NULL;
	if (xlen > 0) {
		/* Second call: the same prog, now with room for its translated insns. */
		memset(&ib, 0, sizeof(ib));
		ib.i.xlated_prog_len = xlen;
		ib.i.xlated_prog_insns = (uint64_t)(uintptr_t)bdata;
		if (get_info(fd, &ib) < 0)
			return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", errno, NULL);
		if (ib.i.xlated_prog_len != xlen) /* cannot change for a loaded prog */
			return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", EAGAIN, NULL);
	}
	char tag[2 * BPF_TAG_SIZE + 1];
	for (int i = 0; i < BPF_TAG_SIZE; i++)
		snprintf(tag + 2 * i, 3, "%02x", ib.i.tag[i]);
	char name[BPF_OBJ_NAME_LEN + 1];
	memcpy(name, ib.i.name, BPF_OBJ_NAME_LEN);
	name[BPF_OBJ_NAME_LEN] = 0;
	char load_time[24];
	snprintf(load_time, sizeof(load_time), "%llu", (unsigned long long)ib.i.load_time);

	napi_value out, v;
	napi_create_object(env, &out);
	napi_set_named_property(env, out, "id", num(env, ib.i.id));
	napi_set_named_property(env, out, "type", num(env, ib.i.type));
	napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, out, "name", v);
	napi_create_string_utf8(env, tag, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, out, "tag", v);
	napi_set_named_property(env, out, "xlated", buf);
	napi_set_named_property(env, out, "jitedLen", num(env, ib.i.jited_prog_len));
	napi_create_string_utf8(env, load_time, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, out, "loadTime", v);
	napi_set_named_property(env, out, "createdByUid", num(env, ib.i.created_by_uid));
	return out;
}

/* ---- fds ---------------------------------------------------------------- */

/* close(fd) */
static napi_value close_fd(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	int fd;
	if (argc < 1 || arg_fd(env, argv[0], &fd))
		return throw_type(env, "close(fd)");
	if (close(fd) < 0 && errno != EINTR)
		return throw_errno(env, "close", errno, NULL);
	return undef(env);
}

/* openDir(path): fd, O_RDONLY|O_DIRECTORY|O_CLOEXEC */
static napi_value open_dir(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	char *path = argc >= 1 ? arg_string(env, argv[0], 4096) : NULL;
	if (!path)
		return throw_type(env, "openDir(path: string)");
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int e = errno;
	free(path);
	if (fd < 0)
		return throw_errno(env, "open", e, NULL);
	return num(env, fd);
}

/* ---- xattrs ------------------------------------------------------------- */

/*
 * xattrGet(path, name): Buffer, or null when the file has no such xattr or its
 * filesystem keeps none (the common case for most jobs: no exception to throw
 * and catch per lookup)
 */
static napi_value xattr_get(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	char *path = argc >= 2 ? arg_string(env, argv[0], 4096) : NULL;
	char *name = argc >= 2 ? arg_string(env, argv[1], 255) : NULL;
	if (!path || !name) {
		free(path);
		free(name);
		return throw_type(env, "xattrGet(path: string, name: string)");
	}
	napi_value result = NULL;
	for (int tries = 0; tries < 4; tries++) {
		ssize_t n = getxattr(path, name, NULL, 0);
		if (n < 0 && (errno == ENODATA || errno == ENOTSUP || errno == EOPNOTSUPP)) {
			napi_get_null(env, &result);
			break;
		}
		if (n < 0) {
			result = throw_errno(env, "getxattr", errno, NULL);
			break;
		}
		void *data;
		napi_value buf;
		if (napi_create_buffer(env, (size_t)n, &data, &buf) != napi_ok)
			break;
		ssize_t m = n > 0 ? getxattr(path, name, data, (size_t)n) : 0;
		if (m < 0 && errno == ERANGE)
			continue; /* it grew between the calls */
		if (m < 0) {
			result = throw_errno(env, "getxattr", errno, NULL);
			break;
		}
		if (m < n) {
			napi_value sub;
			void *sdata;
			if (napi_create_buffer_copy(env, (size_t)m, data, &sdata, &sub) != napi_ok)
				break;
			buf = sub;
		}
		result = buf;
		break;
	}
	free(path);
	free(name);
	if (!result) {
		bool pending = false;
		napi_is_exception_pending(env, &pending);
		if (!pending)
			return throw_errno(env, "getxattr", ERANGE, NULL);
	}
	return result;
}

/* xattrSet(path, name, value: Buffer) */
static napi_value xattr_set(napi_env env, napi_callback_info info)
{
	GET_ARGS(3);
	void *data;
	size_t len;
	char *path = argc >= 3 ? arg_string(env, argv[0], 4096) : NULL;
	char *name = argc >= 3 ? arg_string(env, argv[1], 255) : NULL;
	if (!path || !name || arg_buffer(env, argv[2], &data, &len)) {
		free(path);
		free(name);
		return throw_type(env, "xattrSet(path: string, name: string, value: Buffer)");
	}
	int rc = setxattr(path, name, data, len, 0);
	int e = errno;
	free(path);
	free(name);
	if (rc < 0)
		return throw_errno(env, "setxattr", e, NULL);
	return undef(env);
}

/* xattrRemove(path, name) (throws ENODATA when absent) */
static napi_value xattr_remove(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	char *path = argc >= 2 ? arg_string(env, argv[0], 4096) : NULL;
	char *name = argc >= 2 ? arg_string(env, argv[1], 255) : NULL;
	if (!path || !name) {
		free(path);
		free(name);
		return throw_type(env, "xattrRemove(path: string, name: string)");
	}
	int rc = removexattr(path, name);
	int e = errno;
	free(path);
	free(name);
	if (rc < 0)
		return throw_errno(env, "removexattr", e, NULL);
	return undef(env);
}

/* ---- module ------------------------------------------------------------- */

static void set_const(napi_env env, napi_value obj, const char *name, double v)
{
	napi_set_named_property(env, obj, name, num(env, v));
}

static napi_value init(napi_env env, napi_value exports)
{
	napi_property_descriptor fns[] = {
		{ "progLoad", NULL, prog_load, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progAttach", NULL, prog_attach, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progDetach", NULL, prog_detach, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progQuery", NULL, prog_query, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progGetFdById", NULL, prog_get_fd_by_id, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progGetNextId", NULL, prog_get_next_id, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "progInfo", NULL, prog_info, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "close", NULL, close_fd, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "openDir", NULL, open_dir, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "xattrGet", NULL, xattr_get, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "xattrSet", NULL, xattr_set, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "xattrRemove", NULL, xattr_remove, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	if (napi_define_properties(env, exports, sizeof(fns) / sizeof(fns[0]), fns) != napi_ok ||
	    inotify_define(env, exports) != napi_ok || poll_define(env, exports) != napi_ok)
		return NULL;
	napi_value c;
	napi_create_object(env, &c);
	set_const(env, c, "BPF_F_ALLOW_OVERRIDE", BPF_F_ALLOW_OVERRIDE);
	set_const(env, c, "BPF_F_ALLOW_MULTI", BPF_F_ALLOW_MULTI);
	set_const(env, c, "BPF_F_REPLACE", BPF_F_REPLACE);
	set_const(env, c, "BPF_PROG_TYPE_CGROUP_DEVICE", BPF_PROG_TYPE_CGROUP_DEVICE);
	set_const(env, c, "BPF_CGROUP_DEVICE", BPF_CGROUP_DEVICE);
	set_const(env, c, "BPF_OBJ_NAME_LEN", BPF_OBJ_NAME_LEN);
	napi_set_named_property(env, exports, "constants", c);
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
