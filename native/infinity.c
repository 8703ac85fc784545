/*
 * cgstep-infinity: the process that keeps the node scope populated.
 *
 * It lives in <scope>/system/ so that systemd never sees the scope empty (an
 * empty abandoned scope is garbage-collected). It asks the kernel to spare it
 * from the OOM killer, ignores every catchable signal but SIGTERM (so only the
 * agent, by pid, or an admin with SIGKILL ends it), and sleeps in pause().
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void protect_from_oom(void)
{
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "-1000", 5) < 0)
		(void)0; /* unprivileged: keep the default score */
	close(fd);
}

int main(void)
{
	protect_from_oom();
	for (int sig = 1; sig < NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP || sig == SIGTERM)
			continue;
		signal(sig, SIG_IGN);
	}
	/* Do not hold the caller's terminal or working directory. */
	if (chdir("/") < 0)
		return 1;
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (null > 2)
			close(null);
	}
	for (;;)
		pause();
}
