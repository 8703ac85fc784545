/*
 * inotify.c: one inotify fd for every cgroup file the agent watches, polled by
 * one libuv handle (src/cgroupfs/watch.ts). Node's fs.watch costs a libuv
 * handle and a JS object per file, kilobytes each at ten thousand steps; here a
 * watch is a kernel mark and a number.
 *
 *   inotifyOpen(onReadable): fd   non-blocking, close-on-exec; onReadable() runs
 *                                 on the event loop whenever the fd has events
 *   inotifyAdd(fd, path, mask): wd
 *   inotifyRemove(fd, wd)         (EINVAL: already gone, e.g. its directory removed)
 *   inotifyRead(fd, buf): bytes   0 when nothing is pending
 *   inotifyClose(fd)
 *
 * The poll handle is unreferenced: watches alone never keep the process alive,
 * as fs.watch's `persistent: false`. Parsing the events is left to TypeScript.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <uv.h>

#include "addon.h"

struct watcher {
	uv_poll_t poll; /* first: the handle's address is the watcher's */
	napi_env env;
	napi_ref callback;
	napi_ref resource;
	napi_async_context context;
	int fd;
	struct watcher *next;
};

static struct watcher *watchers;

static void on_poll(uv_poll_t *handle, int status, int events)
{
	(void)status;
	(void)events;
	struct watcher *w = (struct watcher *)handle;
	napi_env env = w->env;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	napi_value cb, recv, result;
	if (napi_get_reference_value(env, w->callback, &cb) == napi_ok && napi_get_reference_value(env, w->resource, &recv) == napi_ok) {
		if (napi_make_callback(env, w->context, recv, cb, 0, NULL, &result) == napi_pending_exception) {
			napi_value err;
			napi_get_and_clear_last_exception(env, &err);
			napi_fatal_exception(env, err);
		}
	}
	napi_close_handle_scope(env, scope);
}

static napi_value js_open(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	napi_valuetype t;
	if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function)
		return throw_type(env, "inotifyOpen(onReadable: function)");
	int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fd < 0)
		return throw_errno(env, "inotify_init1", errno, NULL);
	struct watcher *w = calloc(1, sizeof(*w));
	napi_value resource, name;
	if (!w || napi_create_object(env, &resource) != napi_ok || napi_create_string_utf8(env, "cgstep.inotify", NAPI_AUTO_LENGTH, &name) != napi_ok ||
	    napi_async_init(env, resource, name, &w->context) != napi_ok) {
		free(w);
		close(fd);
		return throw_errno(env, "inotifyOpen", ENOMEM, NULL);
	}
	uv_loop_t *loop;
	int rc;
	if (napi_get_uv_event_loop(env, &loop) != napi_ok || (rc = uv_poll_init(loop, &w->poll, fd)) != 0) {
		napi_async_destroy(env, w->context);
		free(w);
		close(fd);
		return throw_errno(env, "uv_poll_init", EINVAL, NULL);
	}
	w->env = env;
	w->fd = fd;
	napi_create_reference(env, argv[0], 1, &w->callback);
	napi_create_reference(env, resource, 1, &w->resource);
	uv_unref((uv_handle_t *)&w->poll);
	uv_poll_start(&w->poll, UV_READABLE, on_poll);
	w->next = watchers;
	watchers = w;
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

static void on_closed(uv_handle_t *handle)
{
	free(handle);
}

static napi_value js_close(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	int fd;
	if (argc < 1 || arg_fd(env, argv[0], &fd))
		return throw_type(env, "inotifyClose(fd)");
	struct watcher **p = &watchers;
	while (*p && (*p)->fd != fd)
		p = &(*p)->next;
	struct watcher *w = *p;
	if (!w)
		return throw_errno(env, "inotifyClose", EBADF, NULL);
	*p = w->next;
	uv_poll_stop(&w->poll);
	napi_delete_reference(env, w->callback);
	napi_delete_reference(env, w->resource);
	napi_async_destroy(env, w->context);
	uv_close((uv_handle_t *)&w->poll, on_closed);
	close(fd);
	return undef(env);
}

napi_status inotify_define(napi_env env, napi_value exports)
{
	napi_property_descriptor fns[] = {
		{ "inotifyOpen", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyAdd", NULL, js_add, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyRemove", NULL, js_remove, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyRead", NULL, js_read, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "inotifyClose", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	return napi_define_properties(env, exports, sizeof(fns) / sizeof(fns[0]), fns);
}
