/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lockbusctl-run.h"
#include "macro.h"

#define EXIT_CANNOT_EXECUTE 126
#define EXIT_NOT_FOUND      127

static const int forwarded_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };

/* In the child: closes every fd from 3 up but `keep`. Only async-signal-safe
 * calls. */
static void close_all_fds_but(int keep) {
        struct rlimit rl;
        int max;

        if (keep > 3 && close_range(3, (unsigned) keep - 1, 0) < 0 && errno != ENOSYS)
                goto brute;
        if (close_range((unsigned) keep + 1, ~0U, 0) >= 0 || errno != ENOSYS)
                return;
brute:
        max = getrlimit(RLIMIT_NOFILE, &rl) >= 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 65536
                ? (int) rl.rlim_cur : 65536;
        for (int fd = 3; fd < max; fd++)
                if (fd != keep)
                        (void) close(fd);
}

/* The child: never returns. Tells the parent why exec failed through
 * error_fd (O_CLOEXEC: closed by a successful exec). */
_Noreturn static void child(char *const *argv, const sigset_t *saved_mask, pid_t parent, int error_fd) {
        int e;

        /* Without us the hold is gone: the command must not run on. */
        (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
                _exit(EXIT_FAILURE);

        /* We only blocked signals (dispositions are as we got them: what
         * nohup(1) ignores stays ignored), so unblocking them is all. */
        (void) sigprocmask(SIG_SETMASK, saved_mask, NULL);

        close_all_fds_but(error_fd);

        execvp(argv[0], argv);
        e = errno;
        (void) !write(error_fd, &e, sizeof(e));
        _exit(e == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXECUTE);
}

static int wait_status_to_exit(int status) {
        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return EXIT_FAILURE;
}

int run_command(char *const *argv, const char *resource, uint64_t token, int lock_fd) {
        _cleanup_close_ int sfd = -1, error_fd = -1;
        char token_string[32];
        sigset_t mask, saved_mask;
        pid_t parent = getpid(), pid;
        int pipe_fds[2], exec_errno = 0, status = 0, r;
        bool hold_gone = false;
        ssize_t n;

        snprintf(token_string, sizeof(token_string), "%" PRIu64, token);
        if (setenv("LOCKBUS_RESOURCE", resource, 1) < 0 || setenv("LOCKBUS_TOKEN", token_string, 1) < 0)
                return -errno;

        sigemptyset(&mask);
        sigaddset(&mask, SIGCHLD);
        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++)
                sigaddset(&mask, forwarded_signals[i]);
        if (sigprocmask(SIG_BLOCK, &mask, &saved_mask) < 0)
                return -errno;
        sfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sfd < 0) {
                r = -errno;
                goto finish;
        }
        if (pipe2(pipe_fds, O_CLOEXEC) < 0) {
                r = -errno;
                goto finish;
        }
        error_fd = pipe_fds[0];

        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0) {
                r = -errno;
                close(pipe_fds[1]);
                goto finish;
        }
        if (pid == 0)
                child(argv, &saved_mask, parent, pipe_fds[1]);
        close(pipe_fds[1]);

        /* EOF: exec succeeded. Signals meanwhile stay pending in sfd. */
        do
                n = read(error_fd, &exec_errno, sizeof(exec_errno));
        while (n < 0 && errno == EINTR);
        if (n == (ssize_t) sizeof(exec_errno))
                fprintf(stderr, "Failed to execute '%s': %s\n", argv[0], strerror(exec_errno));

        for (;;) {
                struct pollfd p[2] = {
                        { .fd = sfd, .events = POLLIN },
                        /* events 0: POLLERR/POLLHUP only, i.e. the service
                         * closed its end of the hold's pipe. */
                        { .fd = hold_gone ? -1 : lock_fd, .events = 0 },
                };
                struct signalfd_siginfo si;

                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        fprintf(stderr, "Failed to wait for the command: %m\n");
                        /* The child gets SIGTERM with us gone. */
                        goto finish;
                }

                if (p[1].revents & (POLLERR | POLLHUP)) {
                        hold_gone = true;
                        if (exec_errno == 0)
                                fprintf(stderr, "Warning: the hold on '%s' ended while the command runs "
                                        "(broken, expired, or the service went away).\n", resource);
                }

                if (!(p[0].revents & POLLIN))
                        continue;
                n = read(sfd, &si, sizeof(si));
                if (n != (ssize_t) sizeof(si))
                        continue;

                if (si.ssi_signo == SIGCHLD) {
                        pid_t w = waitpid(pid, &status, WNOHANG);

                        if (w == pid)
                                break;
                        continue;
                }
                /* A terminal's signal reached the command already. */
                if (si.ssi_code != SI_KERNEL)
                        (void) kill(pid, (int) si.ssi_signo);
        }

        r = wait_status_to_exit(status);
finish:
        (void) sigprocmask(SIG_SETMASK, &saved_mask, NULL);
        return r;
}
