/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* A stand-in for systemd's file descriptor store, for a lockbusd that a
 * test starts itself (no systemd runs the tests): the datagram socket its
 * $NOTIFY_SOCKET names, read by the test. It keeps what the daemon sends
 * with "FDSTORE=1" and "FDNAME=NAME", forgets an fd on "FDSTOREREMOVE=1"
 * with its FDNAME (closing it), and remembers the lines of the rest
 * (READY=1, STOPPING=1, STATUS=…) for test_fdstore_wait_line().
 * As systemd, it keeps the fds across a restart of the daemon and hands
 * them to the next one: $LISTEN_FDS, $LISTEN_FDNAMES, and the fds from 3
 * up; $LISTEN_PID is the daemon's own PID, which a shell in front of it
 * sets before it execs the rest of the command line.
 *
 * Nothing blocks the daemon: unread datagrams queue in the socket (at most
 * /proc/sys/net/unix/max_dgram_qlen, 10 here by default; a daemon sends a
 * few per start), and test_fdstore_sync() reads what is there. */

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

typedef struct TestFdStore TestFdStore;

/* Binds DIR/notify.sock (DIR must exist and stay until the store is freed). */
TestFdStore *test_fdstore_new(const char *dir);
void test_fdstore_free(TestFdStore *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TestFdStore, test_fdstore_free)

/* Reads every message queued so far. */
void test_fdstore_sync(TestFdStore *s);
/* Reads messages until the store holds n fds; fails the test after
 * timeout_usec. */
void test_fdstore_wait_count(TestFdStore *s, unsigned n, uint64_t timeout_usec);
/* Reads messages until one had the line (e.g. "STOPPING=1"), also one
 * read before; fails the test after timeout_usec. */
void test_fdstore_wait_line(TestFdStore *s, const char *line, uint64_t timeout_usec);
/* The fds it holds now (without reading), and whether one is named so. */
unsigned test_fdstore_count(const TestFdStore *s);
bool test_fdstore_has(const TestFdStore *s, const char *name);

/* Words to put in front of the daemon's command line (before its own
 * wrapper, if any), which hand it the store, and the fds to become its fds
 * 3 and 4 (-1 when unused; at most two fds are handed over). The caller
 * frees the words (g_strfreev()); the fds stay the store's. */
char **test_fdstore_wrapper(const TestFdStore *s, int ret_fds[2]);
