/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Cluster-wide locks on etcd: the decision rules of lock-table.h, made by
 * every lockbusd of a cluster over the same etcd keys. No D-Bus here: the
 * bus layer translates calls into the functions below, as it does for the
 * LockTable. Everything is asynchronous on the instance's sd-event loop, on
 * top of etcd.h; callbacks run from the loop, never from inside the
 * function that started the operation.
 *
 * Keys. Every request (granted or waiting) is one key
 *   <prefix>/locks/<escaped resource>/<machine-id>.<instance>.<seq>
 * (escaped: every byte outside [A-Za-z0-9_.-] as %XX, so no resource name
 * holds a '/' and one resource's keys are exactly the keys under
 * ".../<escaped>/"; instance: 16 random hex digits per ClusterLocks; seq:
 * a counter). The value is a JSON document that describes the request:
 * resource, mode, scope, uid, pid, comm, sender, bus_id (the bus the sender
 * is on: 32 hex digits, "" for a direct connection), machine_id, hostname,
 * instance, since, ttl, expires (µs, CLOCK_REALTIME), description, owner.
 *
 * Order and tokens. A resource's keys are ordered by create_revision; a
 * key's create_revision is its fencing token. etcd revisions grow strictly
 * with every write of the whole cluster and a put to an existing key keeps
 * its create_revision, so tokens increase strictly cluster-wide and never
 * repeat, also across daemon restarts (they are etcd's, not ours).
 *
 * Decision (as lock_table_check): the entry with the lowest create_revision
 * is granted; an exclusive request is granted when no entry precedes it, a
 * shared one when every entry before it is shared. So a new request never
 * passes a waiter (FIFO), a shared request behind a waiting exclusive one
 * waits (no writer starvation), and adjacent shared entries at the head
 * are granted together. Not re-entrant: if an entry ahead of the request
 * (granted or waiting) has the caller as owner -- a persistent entry of
 * the caller's uid on this machine, or a connection/fd entry of the
 * caller's sender on this instance -- the request is refused at once
 * (-EALREADY), whatever its timeout (of two requests of one owner in
 * flight together, the later one is refused).
 *
 * Acquire: one txn puts the request's key on the instance lease and reads
 * the resource's keys (the read sees the put); the decision is made on that
 * read. Not granted with timeout 0: the key is deleted, then -EBUSY with
 * the first entry (a holder) named. Waiting: the request watches only the
 * entry that blocks it (exclusive: the entry just before it; shared: the
 * last exclusive entry before it), from the read's revision + 1, so no
 * deletion between the read and the watch is missed; on its DELETE (or if
 * the watch ends: compaction, member gone) the resource is read again and
 * decided again, watching the next blocker if still blocked (if etcd
 * cannot be read then, the request fails with that error). Nobody polls,
 * and a deletion wakes only the one request behind it (shared requests
 * behind one exclusive wake together, and are granted together); the only
 * timers are the lease's, the requests' timeouts and the backoff of
 * background deletes, lease grants and instance watches that failed.
 * Timeout:
 * the key is deleted, then -ETIMEDOUT. Granting a persistent hold (or one
 * granted after waiting) puts the key again, compared on its
 * create_revision: persistent holds move off the instance lease (lease 0,
 * or a lease of their own with the hold's TTL); the grant is reported only
 * after that put succeeded.
 *
 * The instance lease. cluster_locks_start() grants one lease of
 * lease_ttl_usec (rounded up to seconds) and renews it every TTL/3.
 * Connection and fd holds stay on it: if this daemon dies, etcd deletes
 * them after the TTL and the other hosts' waiters are granted (unless the
 * next instance on the machine moved a connection hold onto its own lease
 * first: cluster_locks_adopt_onto_lease()). The lease
 * counts as LOST when a renewal says it does not exist, or when no renewal
 * succeeded for TTL measured from the *send* time of the last one that did
 * (CLOCK_BOOTTIME, so suspend counts). The lease_lost callback then gets
 * the holds that were on it; requests waiting on it fail with -ENOLINK; a
 * new lease is granted (retried with backoff until etcd answers) and ready
 * is called again. Between the loss and the new lease, acquire fails with
 * -ENOTCONN.
 *
 * Holds removed by others. A hold's key may be deleted by someone else:
 * another host's Break (it adopts the entry and releases it), an
 * administrator's `etcdctl del`, a revocation of the lease the key is on.
 * Another host may then be granted the resource, so the holder must be
 * told. Each instance keeps ONE watch over the whole "<prefix>/locks/"
 * range, of its deletes only (etcd's NOPUT filter), started when the first lease is ready, from the revision + 1 of a
 * read of every key under it (keys only), so nothing between the read and
 * the watch is missed. On a DELETE of a key that belongs to a ClusterHold
 * of this instance (looked up by key; a deletion at a revision not above
 * the hold's token is an older key of that name) the hold_removed callback
 * gets it, and it is freed when that returns. Deletes this instance issued
 * itself are not reported: a released hold (with or without callback), a
 * cancelled or refused request, the holds stop() or a lost lease took are
 * no longer ClusterHolds when the event comes. A hold being released or
 * refreshed when its key is deleted is not reported either: that release
 * or refresh answers -ENOENT (also when etcd had applied it just before the
 * delete, or failed). A request under way whose key is deleted fails with
 * -ENOLINK (at once while it waits for its blocker, else when what is in
 * flight returns), also when the grant was on its way back: so a grant is
 * never reported for a key the watch saw deleted. A revoked instance lease
 * deletes its keys: each of those holds is reported once, by hold_removed
 * or by lease_lost, whichever etcd tells first.
 * If the watch ends (a member gone, the connection lost) it is started
 * again from the last revision seen in a delete + 1 (at once if etcd had
 * confirmed it, else with backoff, 100 ms doubling to 5 s); if that
 * revision was compacted, every key is read again (keys only) and each
 * hold whose key is missing from that read (or has another create
 * revision), and whose token is not above the read's revision, is reported
 * as removed; then the watch starts from that read's revision + 1.
 * cluster_locks_adopt() does the same read (one at a time: adopts while
 * one is in flight share the next), since the adopted entry was read
 * before and may have been deleted before the watch saw anything.
 * A PUT to one of our keys by someone else is not watched: the key keeps its
 * create_revision, so its place in the order and its token stand; only
 * what others read from the value changes (a value that no longer parses
 * counts as exclusive, and a lease put on it that then expires deletes
 * it: reported then). Whoever may write under the prefix may delete there
 * too; nothing here defends against such writers beyond telling deletes.
 * The cost: every instance receives every DELETE under the prefix on its
 * one stream (each release, and each request given up, of the whole
 * cluster: a few hundred bytes of JSON each), and parses each to look its
 * key up in a hash table; adopt and each compaction cost a read of every
 * key under the prefix (keys only). That is the trade for not polling and
 * for not holding one stream per hold. The watch is cancelled by stop()
 * and free().
 *
 * Safety argument.
 * 1. No false grant. A grant is reported only from the answer of a txn or
 *    range that etcd served (linearizable reads), in which the request's
 *    key existed and no conflicting entry preceded it. Entries created
 *    later have larger create_revisions, so they sort after ours and never
 *    take precedence; entries before ours only go away. So while our key
 *    exists, no other request's decision can grant a conflicting hold. Any
 *    failure (etcd unreachable, timeout, unknown outcome, a lease that
 *    changed under the request) is reported as that error and nothing is
 *    granted; a key that may have been written is deleted in the
 *    background (retried until etcd answers; unknown outcomes once more a
 *    TTL later, in case the write was committed late), and it is on the
 *    instance lease anyway.
 * 2. Holds end only through their key. A hold is released by deleting its
 *    key, compared on its create_revision, so a stale handle never deletes
 *    a newer request's key. etcd deletes the keys of an expired lease.
 * 3. Losing the lease. etcd expires a lease no sooner than TTL after it
 *    received the last renewal, which is after we sent it. We count the
 *    lease as lost at send time + TTL, i.e. before etcd can expire it and
 *    before any other host can be granted what we held (up to clock rate
 *    differences between the hosts, which are tiny against a TTL of
 *    seconds). Holders are told then. A daemon cut off from etcd therefore
 *    tells its holders before their locks can be given to anyone else.
 * 4. Late writers. A holder that keeps acting after its hold is lost (it
 *    did not hear, or was paused) is caught by fencing: its token is an
 *    older create_revision than the next holder's, and the protected
 *    resource rejects writes with a smaller token than it has seen.
 * 5. Persistent holds outlive the instance: their key has no lease (or a
 *    lease of their own that only Refresh renews). A crash between the
 *    acquire txn and the put that makes them persistent leaves the key on
 *    the instance lease: it vanishes after the TTL, and the caller never
 *    heard of a grant.
 * 6. Moving a connection hold onto a new instance's lease (after a
 *    restart) is one put compared on the key's create_revision: it lands
 *    only on the very key that was granted, which exists throughout (on the
 *    old lease, then on the new one), so the resource is never free in
 *    between; a key that went meanwhile stays gone (-ENOENT) and its holder
 *    is told.
 *
 * Not here: quotas, the bus, Break (the caller reads the holders with
 * cluster_locks_owner(), adopts and releases them). */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "etcd.h"
#include "hold.h"
#include "macro.h"

typedef struct ClusterLocks ClusterLocks;
typedef struct ClusterAcquire ClusterAcquire;
typedef struct ClusterHold ClusterHold;

typedef struct ClusterHost {
        const char *machine_id;         /* 32 lowercase hex digits (/etc/machine-id) */
        const char *hostname;
        /* Which daemon of the machine this is, the same for each of its
         * runs (lockbusd: the ID of the bus it serves; NULL: ""). The
         * volatile entries of an earlier run are told apart by it from
         * those of another daemon on the same machine. */
        const char *daemon_id;
} ClusterHost;

/* One key of the lock space as read from etcd: a hold or a waiting
 * request. Owned by whoever gives it out; strings are never NULL. */
typedef struct ClusterEntry {
        char *key;
        char *resource;
        LockMode mode;
        HoldScope scope;
        uint64_t token;                 /* the key's create_revision */
        int64_t lease;                  /* 0: none */
        uid_t uid;
        pid_t pid;
        char *comm;
        char *sender;
        char *bus_id;                   /* 32 hex digits, "": a direct connection (or an older value) */
        char *machine_id;
        char *hostname;
        char *instance;
        char *daemon_id;                /* ClusterHost.daemon_id of its instance, "" if older */
        char *owner;
        char *description;
        uint64_t since_usec;            /* CLOCK_REALTIME */
        uint64_t ttl_usec;              /* 0: none */
        uint64_t expires_usec;          /* CLOCK_REALTIME, 0: never */
        bool is_valid;                  /* false: the value did not parse (treated as an exclusive entry) */
} ClusterEntry;

void cluster_entry_clear(ClusterEntry *e);

typedef struct ClusterLocksCallbacks {
        /* A lease is in place (after start, and again after each loss). */
        void (*ready)(ClusterLocks *c, int64_t lease_id, void *userdata);
        /* etcd refused or did not answer a lease grant; it is tried again
         * (with backoff) whatever the callback does. May be NULL. */
        void (*grant_failed)(ClusterLocks *c, int error, const char *error_message, void *userdata);
        /* The instance lease was lost: holds (n of them, possibly 0) were on
         * it and are gone; they are freed when this returns. */
        void (*lease_lost)(ClusterLocks *c, ClusterHold * const *holds, size_t n, void *userdata);
        /* Someone else deleted the key of hold h (see "Holds removed by
         * others" above): it is gone and may be granted to another host.
         * h is out of the instance's list already and freed when this
         * returns; do not release or refresh it. May be NULL (such holds
         * are then freed silently). */
        void (*hold_removed)(ClusterLocks *c, ClusterHold *h, void *userdata);
} ClusterLocksCallbacks;

/* prefix: the key prefix, e.g. "/lockbus" (no trailing '/'). host is
 * copied. etcd and event must outlive the instance. */
int cluster_locks_new(sd_event *event, EtcdClient *etcd, const char *prefix, const ClusterHost *host,
                      uint64_t lease_ttl_usec, ClusterLocks **ret);

/* Grants the instance lease and keeps it alive. callbacks is copied. */
int cluster_locks_start(ClusterLocks *c, const ClusterLocksCallbacks *callbacks, void *userdata);

/* Cancels every pending acquire (without callbacks; their keys are
 * deleted), stops renewing and revokes the lease, so this instance's
 * connection and fd holds go at once (their ClusterHolds are freed here,
 * without the lease_lost callback). Persistent holds stay; the instance
 * watch ends here, so their removal by others is no longer reported.
 * callback (may be NULL) gets etcd's answer. With keep_lease the lease is
 * not revoked: the keys on it stay until it expires, or until a next
 * instance on this machine takes them over (cluster_locks_adopt_onto_lease());
 * callback gets 0 once the deletes of the cancelled requests, and the
 * releases under way, are done. Afterwards only release, refresh, owner,
 * list and free are of use. -EINVAL if stopped already. */
int cluster_locks_stop(ClusterLocks *c, bool keep_lease,
                       void (*callback)(ClusterLocks *c, int error, void *userdata), void *userdata);

/* Frees everything without callbacks and without telling etcd: like a
 * crash, the lease's keys go after its TTL. May be called from any callback
 * of the instance. NULL-safe; returns NULL. */
ClusterLocks *cluster_locks_free(ClusterLocks *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(ClusterLocks *, cluster_locks_free);

/* The current instance lease (0: none), and the instance's random id. */
int64_t cluster_locks_get_lease(const ClusterLocks *c);
const char *cluster_locks_get_instance(const ClusterLocks *c);

/* ---- acquire ------------------------------------------------------------ */

typedef struct ClusterRequest {
        const char *resource;           /* a valid resource name */
        LockMode mode;
        HoldScope scope;
        uint64_t timeout_usec;          /* 0: try once; UINT64_MAX: forever */
        uint64_t ttl_usec;              /* 0: none */
        uid_t uid;
        pid_t pid;
        const char *comm;
        const char *sender;             /* required unless persistent */
        const char *bus_id;             /* the sender's bus (32 hex digits); NULL or "": direct */
        const char *description;        /* may be NULL */
} ClusterRequest;

/* error:
 *   0            granted: hold is the new hold (owned by the instance, valid
 *                until released or reported lost)
 *   -EBUSY       not granted and no time left to wait: blocker is the first
 *                entry of the resource (a holder)
 *   -EALREADY    the caller already holds or waits for it: blocker is that entry
 *   -ETIMEDOUT   waited timeout_usec (the request's key is gone)
 *   -ENOLINK     the instance lease was lost while the request was pending,
 *                or its key vanished (lease expired)
 *   other        etcd failed (error_message says how), also while waiting
 *                (when the resource could not be read again after its watch
 *                ended); nothing is granted, the key is deleted in the
 *                background.
 * Borrowed arguments, valid during the callback. The ClusterAcquire is
 * freed when it returns. */
typedef void (*ClusterAcquireCallback)(ClusterAcquire *a, int error, const char *error_message, ClusterHold *hold,
                                       const ClusterEntry *blocker, void *userdata);

/* Fails at once only for bad arguments (-EINVAL), or -ENOTCONN without a
 * lease (not started, or lost and not granted again). ret may be NULL. */
int cluster_locks_acquire(ClusterLocks *c, const ClusterRequest *request, ClusterAcquireCallback callback,
                          void *userdata, ClusterAcquire **ret);

/* The caller left: the request's key is deleted in the background, no
 * callback. NULL-safe; a no-op from inside its own callback. */
void cluster_acquire_cancel(ClusterAcquire *a);

/* The request's key (for tests and logs). */
const char *cluster_acquire_get_key(const ClusterAcquire *a);

/* ---- holds --------------------------------------------------------------- */

const ClusterEntry *cluster_hold_get_entry(const ClusterHold *h);
void cluster_hold_set_userdata(ClusterHold *h, void *userdata);
void *cluster_hold_get_userdata(const ClusterHold *h);

/* Every hold of this instance: a new array of borrowed pointers (holds
 * being released or refreshed are not in it until etcd answered). */
GPtrArray *cluster_locks_get_holds(ClusterLocks *c);

/* Makes a handle for an entry read with owner/list (e.g. a persistent hold
 * granted by an earlier daemon on this machine), so it can be released or
 * refreshed. Costs a read of every key under the prefix in the background
 * (shared with adopts under way), to learn whether it went meanwhile. */
int cluster_locks_adopt(ClusterLocks *c, const ClusterEntry *e, ClusterHold **ret);

/* Moves a connection or fd entry of an earlier instance of this machine
 * (read with owner/list) onto this instance's lease: after a restart of the
 * daemon, whose holder is still connected to the same bus (or whose fd came
 * back from systemd's fd store). One txn puts the
 * key again, compared on its create_revision, with the current instance
 * lease and the value's instance (and owner) made this instance's; the rest
 * of the value stays. A put keeps the create_revision, so the token and the
 * place in the resource's order stay.
 * Safety: the key is never deleted in between (the put either finds it
 * with the same create_revision, or fails and writes nothing), so no other
 * request can be granted meanwhile: everything behind it still waits on
 * it, as when the earlier instance held it. If the old lease expired
 * first, the key is gone (-ENOENT) and others may be granted already: the
 * holder must be told it lost the lock.
 * callback: error 0 with the new hold (owned by the instance, as from an
 * acquire); -ENOENT: the key is gone (or has another create_revision);
 * -ENOLINK: the instance lease was lost while the put was under way; other:
 * etcd failed (the key is as it was, on its old lease). Fails at once for
 * bad arguments (-EINVAL) or without a lease (-ENOTCONN). */
typedef void (*ClusterAdoptCallback)(ClusterLocks *c, int error, const char *error_message, ClusterHold *hold,
                                     void *userdata);
int cluster_locks_adopt_onto_lease(ClusterLocks *c, const ClusterEntry *e, ClusterAdoptCallback callback,
                                   void *userdata);

/* Deletes the hold's key (compared on its token). error 0: released;
 * -ENOENT: it was gone already (expired, lease lost); both free the hold
 * after the callback. Any other error: etcd failed, the hold is kept.
 * callback NULL: the hold is forgotten at once and its key deleted in the
 * background, retried until etcd answers. */
typedef void (*ClusterDoneCallback)(ClusterLocks *c, int error, const char *error_message, void *userdata);
int cluster_locks_release(ClusterLocks *c, ClusterHold *h, ClusterDoneCallback callback, void *userdata);

/* Renews the hold's TTL: expires_usec is the new expiry (CLOCK_REALTIME;
 * 0 for a hold without TTL: nothing changes, but a hold whose key is gone
 * is found out). A persistent hold with
 * a TTL has a lease of its own, renewed here; a connection or fd hold's TTL
 * is the caller's timer (its new expiry is written to the value).
 * -ENOENT: the hold is gone (freed after the callback). */
typedef void (*ClusterRefreshCallback)(ClusterLocks *c, int error, const char *error_message,
                                       uint64_t expires_usec, void *userdata);
int cluster_locks_refresh(ClusterLocks *c, ClusterHold *h, ClusterRefreshCallback callback, void *userdata);

/* ---- reading ----------------------------------------------------------- */

/* entries: the granted entries (the compatible head of each resource's
 * order), sorted by resource (bytewise), then token; n_waiting: the other
 * entries. Borrowed, valid during the callback. */
typedef void (*ClusterQueryCallback)(ClusterLocks *c, int error, const char *error_message,
                                     const ClusterEntry * const *entries, size_t n, size_t n_waiting,
                                     void *userdata);

/* One resource (n 0: not locked) / every resource. */
int cluster_locks_owner(ClusterLocks *c, const char *resource, ClusterQueryCallback callback, void *userdata);
int cluster_locks_list(ClusterLocks *c, ClusterQueryCallback callback, void *userdata);
/* The list a new instance takes its machine's holds back from: also
 * deletes (in the background) the waiting requests of earlier runs of this
 * daemon (cluster_locks_is_earlier_run()), whose callers left with them,
 * so that what waits behind them does not wait for their lease. */
int cluster_locks_list_at_start(ClusterLocks *c, ClusterQueryCallback callback, void *userdata);

/* Whether e comes from an earlier run of this daemon: another instance of
 * this machine with the same daemon_id (or from before daemon IDs). The
 * connection and fd holds and the waiting requests of such runs are this
 * instance's to take back or delete; a persistent hold belongs to the
 * machine (its daemon's ID may change, e.g. with a reboot). */
bool cluster_locks_is_earlier_run(const ClusterLocks *c, const ClusterEntry *e);

/* ---- exposed for tests -------------------------------------------------- */

/* What this instance asked etcd, for tests and metrics. */
typedef struct ClusterLocksStats {
        uint64_t n_acquires;            /* acquire txns sent */
        uint64_t n_reads;               /* a waiter read its resource again */
        uint64_t n_watches;             /* a waiter started watching its blocker */
        uint64_t n_prefix_watches;      /* the instance watch was started (again) */
        uint64_t n_prefix_reads;        /* every key was read (start, adopt, compaction) */
} ClusterLocksStats;

ClusterLocksStats cluster_locks_get_stats(const ClusterLocks *c);

/* The key component for a resource name (g_free()). */
char *cluster_resource_escape(const char *resource);
