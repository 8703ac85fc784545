/*
 * addon.h: what the addon's source files share: errors thrown the same way
 * (errno name, number and syscall on the Error) and argument checks.
 */
#ifndef CGSTEP_ADDON_H
#define CGSTEP_ADDON_H
#include <node_api.h>
#include <stddef.h>
#include <stdint.h>

/* argc and argv[n] of a napi_callback's arguments. */
#define GET_ARGS(n)                                                              \
	size_t argc = (n);                                                           \
	napi_value argv[(n) > 0 ? (n) : 1];                                          \
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)         \
		return NULL;

napi_value throw_errno(napi_env env, const char *sys, int e, const char *log);
napi_value throw_type(napi_env env, const char *msg);
int arg_u32(napi_env env, napi_value v, uint32_t *out);
int arg_fd(napi_env env, napi_value v, int *out);
char *arg_string(napi_env env, napi_value v, size_t max);
int arg_buffer(napi_env env, napi_value v, void **data, size_t *len);
napi_value num(napi_env env, double d);
napi_value undef(napi_env env);

/* native/inotify.c: adds inotifyOpen/Add/Remove/Read to exports. */
napi_status inotify_define(napi_env env, napi_value exports);
/* native/poll.c: adds pollStart/pollStop to exports. */
napi_status poll_define(napi_env env, napi_value exports);

#endif
