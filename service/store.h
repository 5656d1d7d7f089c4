/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The Store: holds and fencing-token reservations on disk. It knows nothing
 * of waiters or of the bus.
 *
 * Two directories, each opened once (O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC) and
 * every file opened relative to that fd with O_NOFOLLOW:
 *   - the lock directory: persistent holds and the token reservation.
 *     New hold files and removals are made durable together (group commit):
 *     store_save_hold() and store_remove_hold() change the directory at once
 *     (temp file, rename; unlink) and store_sync() then makes every change
 *     so far durable with one syncfs(). The caller answers a grant or an
 *     unlock only after the store_sync() that follows it. A rewrite of an
 *     existing hold and the token reservation replace acknowledged contents
 *     and are durable on return (temp file, fsync, rename, fsync of the
 *     directory);
 *   - the runtime directory: connection and fd holds; written atomically
 *     (temp file, rename), not fsynced: they must not outlive a reboot.
 *
 * One file per hold, named "<stem>@<token>" (stem from
 * resource_name_to_file_stem()), a GKeyFile a human can `cat`:
 *
 *   [Hold]
 *   Resource=db
 *   Mode=exclusive
 *   Scope=persistent
 *   Token=17
 *   UID=1000
 *   PID=4242
 *   Comm=psql
 *   Sender=:1.42
 *   BusID=0123456789abcdef0123456789abcdef
 *   Since=1763812345000000
 *   Expires=0
 *   TTL=0
 *   Description=nightly backup
 *
 * The token reservation is the file "tokens" in the lock directory: one
 * decimal line, the highest token that may have been handed out.
 *
 * Files whose name starts with '.' are the store's own (temp files, the
 * ".quarantine" directory); files that cannot be parsed are moved into
 * ".quarantine/" of their directory, logged, and skipped.
 *
 * The store takes an exclusive flock() on the lock directory at open, so two
 * daemons never write one directory: store_open() blocks until it gets it. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include "hold.h"
#include "macro.h"

typedef struct Store Store;

/* Opens (creating if missing, mode 0755) both directories and locks the
 * lock directory. -EINVAL if both are the same directory. Returns 0 or a
 * negative errno (logged by the caller). */
int store_open(const char *lock_directory, const char *runtime_directory, Store **ret);
Store *store_free(Store *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(Store *, store_free);

const char *store_lock_directory(const Store *s);
const char *store_runtime_directory(const Store *s);

/* Writes the hold's file (persistent → lock directory, see above for when
 * it is durable; connection and fd → runtime directory). A directory
 * that was removed while open gives -ENOENT: what is written there would
 * be lost (see store_reopen_removed_directories()). On failure nothing is
 * left behind (the temp
 * file is removed) and a negative errno is returned; -EINVAL for a hold the
 * loader would reject, so a saved hold is never quarantined later. */
int store_save_hold(Store *s, const Hold *h);

/* Removes the hold's file (durable after the next store_sync() for
 * persistent holds). -ENOENT if it is already gone. */
int store_remove_hold(Store *s, const Hold *h);

/* If a directory was removed while open and has been created again since
 * (by an administrator, systemd-tmpfiles), opens the new one (and locks
 * it): returns 1, and the caller must write its state there again; else 0.
 * *ret_lock_gone / *ret_runtime_gone tell which directory is removed and
 * not back (every write there fails with -ENOENT meanwhile). */
int store_reopen_removed_directories(Store *s, bool *ret_lock_gone, bool *ret_runtime_gone);

/* True if the lock directory has changes store_sync() has not made durable. */
bool store_needs_sync(const Store *s);

/* Makes every change to the lock directory so far durable (one syncfs()).
 * On failure it cannot be known which of them reached the disk. */
int store_sync(Store *s);

/* Reads every hold file of both directories. Unparsable or inconsistent
 * files (wrong name for their contents, invalid resource name, unknown mode
 * or scope, a persistent hold in the runtime directory, …) are moved to
 * ".quarantine/" and logged; they never fail the load. Returns 0 and an
 * array of Hold* (free function set) in ret, or a negative errno if a
 * directory cannot be read at all. Strings of loaded holds are never NULL.
 * Stale temp files (".tmp-*", left by a crash mid-write) are deleted: only
 * the holder of the directory lock writes there. */
int store_load_holds(Store *s, GPtrArray **ret);

/* What store_load_holds() does with the contents of one hold file, without
 * the disk; for the fuzzer and tests. data is size bytes (need not be
 * NUL-terminated). The hold must be a well-formed [Hold] group that
 * store_save_hold() would write, belong in its directory (persistent ones in
 * the lock directory, connection and fd ones in the runtime directory) and,
 * unless file_name is NULL, be the contents of a file of that name
 * ("<stem>@<token>"). Returns 0 and the hold, with no string NULL, in ret;
 * -EBADMSG for any invalid contents, with the reason (g_free()) in ret_reason
 * if that is not NULL; -ENOMEM. */
int store_parse_hold(const char *data, size_t size, const char *file_name, bool in_runtime_directory,
                     Hold **ret, char **ret_reason);

/* Reads the token reservation: 0 if the file does not exist yet (a fresh
 * directory). -EBADMSG if it exists but cannot be parsed: the caller must
 * not guess a value, tokens would go backwards. */
int store_read_token_reservation(Store *s, uint64_t *ret);

/* Durably records that tokens up to and including `upto` may be handed out. */
int store_write_token_reservation(Store *s, uint64_t upto);

/* False if the reservation file is no longer the one last written (removed
 * or replaced while the daemon runs, or the lock directory removed with
 * it): it must be written again before the next token, or a crash could
 * let tokens go back. One fstatat(): it is asked on every grant. */
bool store_token_reservation_intact(Store *s);
