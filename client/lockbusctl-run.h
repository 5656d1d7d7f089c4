/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* `lockbusctl run`: runs a command while this process keeps an fd hold.
 *
 * The command is forked and executed (argv[0] looked up in $PATH) with
 * LOCKBUS_RESOURCE and LOCKBUS_TOKEN in its environment, stdin, stdout and
 * stderr inherited, and no other file descriptor: everything from fd 3 up
 * is closed in the child, so neither the lock fd nor anything else of ours
 * leaks into it. This process keeps the lock fd open until the command has
 * exited; then the caller releases the hold (verb_run: Unlock on the bus,
 * so the lock is free when lockbusctl exits, then closing the fd).
 *
 * While it waits, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
 * sent to this process are forwarded to the command — unless the kernel
 * sent them (a terminal's ^C or ^\ reaches the whole foreground process
 * group, the command included, already). If this process dies, the
 * command gets SIGTERM (PR_SET_PDEATHSIG): it must not run on unprotected.
 * If the hold ends while the command runs (Break, TTL, a daemon that
 * went away), a warning goes to stderr; the command is left alone.
 *
 * Returns the exit status for lockbusctl: the command's own, 128+N if a
 * signal N killed it, 127 if it was not found, 126 if it could not be
 * executed otherwise (the error is printed); or a negative errno if the
 * command could not be started at all (fork failed). */

#include <stdbool.h>
#include <stdint.h>

int run_command(char *const *argv, const char *resource, uint64_t token, int lock_fd);
