/*
 * poll.c: call a JavaScript function whenever an fd the agent owns is
 * readable, from one libuv poll handle on Node's own event loop. Used for the
 * inotify fd (src/cgroupfs/watch.ts) and the RPC socket's listening fd
 * (src/rpc/listener.ts), which Node's own handles cannot serve: fs.watch costs
 * a handle per file, and net.Server accepts every queued connection in one
 * turn with no say in the order.
 *
 *   pollStart(fd, onReadable, keepAlive)  onReadable() runs on the event loop
 *                                         while the fd is readable (level-triggered);
 *                                         keepAlive false: the handle alone never keeps
 *                                         the process alive (fs.watch's persistent: false)
 *   pollStop(fd)                          stops and frees the handle; the fd stays open,
 *                                         for its owner to close
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <uv.h>

#include "addon.h"

struct poller {
	uv_poll_t poll; /* first: the handle's address is the poller's */
	napi_env env;
	napi_ref callback;
	napi_ref resource;
	napi_async_context context;
	int fd;
	struct poller *next;
};

static struct poller *pollers;

static void on_poll(uv_poll_t *handle, int status, int events)
{
	(void)status;
	(void)events;
	struct poller *p = (struct poller *)handle;
	napi_env env = p->env;
	napi_handle_scope scope;
	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	napi_value cb, recv, result;
	if (napi_get_reference_value(env, p->callback, &cb) == napi_ok && napi_get_reference_value(env, p->resource, &recv) == napi_ok) {
		if (napi_make_callback(env, p->context, recv, cb, 0, NULL, &result) == napi_pending_exception) {
			napi_value err;
			napi_get_and_clear_last_exception(env, &err);
			napi_fatal_exception(env, err);
		}
	}
	napi_close_handle_scope(env, scope);
}

static napi_value js_start(napi_env env, napi_callback_info info)
{
	GET_ARGS(3);
	int fd;
	napi_valuetype t;
	bool keep = false;
	if (argc < 3 || arg_fd(env, argv[0], &fd) || napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function ||
	    napi_get_value_bool(env, argv[2], &keep) != napi_ok)
		return throw_type(env, "pollStart(fd, onReadable: function, keepAlive: boolean)");
	for (struct poller *q = pollers; q; q = q->next)
		if (q->fd == fd)
			return throw_errno(env, "pollStart", EEXIST, NULL);
	struct poller *p = calloc(1, sizeof(*p));
	napi_value resource, name;
	if (!p || napi_create_object(env, &resource) != napi_ok || napi_create_string_utf8(env, "cgstep.poll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
	    napi_async_init(env, resource, name, &p->context) != napi_ok) {
		free(p);
		return throw_errno(env, "pollStart", ENOMEM, NULL);
	}
	uv_loop_t *loop;
	int rc;
	if (napi_get_uv_event_loop(env, &loop) != napi_ok || (rc = uv_poll_init(loop, &p->poll, fd)) != 0) {
		napi_async_destroy(env, p->context);
		free(p);
		return throw_errno(env, "uv_poll_init", EINVAL, NULL);
	}
	p->env = env;
	p->fd = fd;
	napi_create_reference(env, argv[1], 1, &p->callback);
	napi_create_reference(env, resource, 1, &p->resource);
	if (!keep)
		uv_unref((uv_handle_t *)&p->poll);
	uv_poll_start(&p->poll, UV_READABLE, on_poll);
	p->next = pollers;
	pollers = p;
	return undef(env);
}

static void on_closed(uv_handle_t *handle)
{
	free(handle);
}

static napi_value js_stop(napi_env env, napi_callback_info info)
{
	GET_ARGS(1);
	int fd;
	if (argc < 1 || arg_fd(env, argv[0], &fd))
		return throw_type(env, "pollStop(fd)");
	struct poller **q = &pollers;
	while (*q && (*q)->fd != fd)
		q = &(*q)->next;
	struct poller *p = *q;
	if (!p)
		return throw_errno(env, "pollStop", EBADF, NULL);
	*q = p->next;
	/* Off epoll now (uv_poll_stop), so the owner may close the fd straight after. */
	uv_poll_stop(&p->poll);
	napi_delete_reference(env, p->callback);
	napi_delete_reference(env, p->resource);
	napi_async_destroy(env, p->context);
	uv_close((uv_handle_t *)&p->poll, on_closed);
	return undef(env);
}

napi_status poll_define(napi_env env, napi_value exports)
{
	napi_property_descriptor fns[] = {
		{ "pollStart", NULL, js_start, NULL, NULL, NULL, napi_enumerable, NULL },
		{ "pollStop", NULL, js_stop, NULL, NULL, NULL, napi_enumerable, NULL },
	};
	return napi_define_properties(env, exports, sizeof(fns) / sizeof(fns[0]), fns);
}
