// SPDX-License-Identifier: GPL-2.0
/*
 * The benchmark's workloads, compiled with the system cc at benchmark time
 * (bench/workload.py). A compiled loop, not Python, so that the figures
 * measure the tracer and not an interpreter; every mode times its own loop
 * with CLOCK_MONOTONIC, so a tracer's start-up and tear-down never count.
 *
 *   churn N      N rounds of: a child that unshare(CLONE_NEWUTS|CLONE_NEWIPC)s
 *                and exits; a clone(CLONE_NEWPID|CLONE_NEWUTS) child that exits;
 *                setns to a second live UTS namespace and back; a plain
 *                fork+exit (which a default watch filters out in the kernel).
 *                4 namespace operations and 2 plain forks per round.
 *   unshare N    N x unshare(CLONE_NEWUTS) in this one process (tight loop)
 *   getppid N    N x getppid(): an unrelated syscall, for the tracepoint tax
 *   exec N       N x a child that execs /bin/true: execs that move no namespace,
 *                which every exec program of a tracer sees
 *   rate R S     unshare(CLONE_NEWUTS) paced at R per second for S seconds
 *                (R = 0: as fast as possible); reports the rate reached
 *
 * Prints one JSON line: {"mode":..., "ops":..., "events":..., "ns":...}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void reap(pid_t pid)
{
	int status;

	if (pid < 0)
		die("fork/clone");
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		die("child");
}

static void churn(long n)
{
	/* Two live UTS namespaces to move between: an nsfs fd keeps each alive. */
	int a = open("/proc/self/ns/uts", O_RDONLY);
	int b;

	if (a < 0 || unshare(CLONE_NEWUTS))
		die("churn setup");
	b = open("/proc/self/ns/uts", O_RDONLY);
	if (b < 0)
		die("open ns");
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid == 0)
			_exit(unshare(CLONE_NEWUTS | CLONE_NEWIPC) ? 1 : 0);
		reap(pid);
		/* raw clone without a stack: the child returns here, like fork */
		pid = syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0);
		if (pid == 0)
			syscall(SYS_exit_group, 0);
		reap(pid);
		if (setns(a, CLONE_NEWUTS) || setns(b, CLONE_NEWUTS))
			die("setns");
		pid = fork();
		if (pid == 0)
			_exit(0);
		reap(pid);
	}
}

static long rate(double per_s, double seconds)
{
	uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9), t;
	long done = 0;

	while ((t = now_ns()) < end) {
		/* catch up to the schedule in bursts of at most 64, then spin */
		long due = per_s > 0 ? (long)((t - start) * per_s / 1e9) + 1 : done + 64;

		for (int k = 0; done < due && k < 64; k++, done++)
			if (syscall(SYS_unshare, CLONE_NEWUTS))
				die("unshare");
	}
	return done;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	long n = argc > 2 ? atol(argv[2]) : 0, ops = n, events = 0;
	uint64_t t0, t1;

	/* the name the tracers' records carry, to find ours among the machine's */
	prctl(PR_SET_NAME, "nsbench", 0, 0, 0);
	t0 = now_ns();
	if (!strcmp(mode, "churn")) {
		churn(n);
		events = 4 * n;
	} else if (!strcmp(mode, "unshare")) {
		for (long i = 0; i < n; i++)
			if (syscall(SYS_unshare, CLONE_NEWUTS))
				die("unshare");
		events = n;
	} else if (!strcmp(mode, "exec")) {
		for (long i = 0; i < n; i++) {
			pid_t pid = fork();

			if (pid == 0) {
				execl("/bin/true", "true", (char *)NULL);
				_exit(127);
			}
			reap(pid);
		}
	} else if (!strcmp(mode, "getppid")) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
	} else if (!strcmp(mode, "rate") && argc > 3) {
		ops = events = rate(atof(argv[2]), atof(argv[3]));
	} else {
		fprintf(stderr, "usage: %s churn N | unshare N | getppid N | exec N | rate PER_S SECONDS\n", argv[0]);
		return 2;
	}
	t1 = now_ns();
	printf("{\"mode\":\"%s\",\"ops\":%ld,\"events\":%ld,\"ns\":%llu}\n",
	       mode, ops, events, (unsigned long long)(t1 - t0));
	return 0;
}
