/*
 * inotify.c: one inotify fd for every cgroup file the agent watches
 * (src/cgroupfs/watch.ts). Node's fs.watch costs a libuv
 * handle and a JS object per file, kilobytes each at ten thousand steps; here a
 * watch is a kernel mark and a number.
 *
 *   inotifyOpen(): fd             non-blocking, close-on-exec (polled through
 *                                 native/poll.c's pollStart, closed with close)
 *   inotifyAdd(fd, path, mask): wd
 *   inotifyRemove(fd, wd)         (EINVAL: already gone, e.g. its directory removed)
 *   inotifyRead(fd, buf): bytes   0 when nothing is pending
 *
 * Parsing the events is left to TypeScript.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "addon.h"

static napi_value js_open(napi_env env, napi_callback_info info)
{
	(void)info;
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0)
		return throw_errno(env, "inotify_init1", errno, NULL);
	return num(env, fd);
}

static napi_value js_add(napi_env env, napi_callback_info info)
{
	GET_ARGS(3);
	int fd;
	uint32_t mask;
	char *path = argc >= 3 ? arg_string(env, argv[1], 4096) : NULL;
	if (!path || arg_fd(env, argv[0], &fd) || arg_u32(env, argv[2], &mask)) {
		free(path);
		return throw_type(env, "inotifyAdd(fd, path: string, mask: number)");
	}
	int wd = inotify_add_watch(fd, path, mask);
	int e = errno;
	free(path);
	if (wd < 0)
		return throw_errno(env, "inotify_add_watch", e, NULL);
	return num(env, wd);
}

static napi_value js_remove(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	int fd;
	uint32_t wd;
	if (argc < 2 || arg_fd(env, argv[0], &fd) || arg_u32(env, argv[1], &wd))
		return throw_type(env, "inotifyRemove(fd, wd)");
	if (inotify_rm_watch(fd, (int)wd) < 0)
		return throw_errno(env, "inotify_rm_watch", errno, NULL);
	return undef(env);
}

static napi_value js_read(napi_env env, napi_callback_info info)
{
	GET_ARGS(2);
	int fd;
	void *data;
	size_t len;
	if (argc < 2 || arg_fd(env, argv[0], &fd) || arg_buffer(env, argv[1], &data, &len))
		return throw_type(env, "inotifyRead(fd, buf: Buffer)");
	ssize_t n;
	do
		n = read(fd, data, len);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == EAGAIN)
		n = 0;
	if (n < 0)
		return throw_errno(env, "read", errno, NULL);
	return num(env, (double)n);
}

napi_status inotify_define(napi_env env, napi_value exports)
{
	napi_property_descriptor fns[] = {
		{ "inotifyOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyAdd", NULL, js_add, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyRemove", NULL, js_remove, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyRead", NULL, js_read, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	return napi_define_properties(env, exports, sizeof(fns) / sizeof(fns[0]), fns);
}
