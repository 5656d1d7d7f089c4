/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The etcd backend (cluster mode, --backend=etcd): the Manager's grants,
 * releases and queries carried out on etcd by cluster-locks.h instead of
 * the LockTable's decisions and the lock directory. The Manager keeps the
 * bus side: identities, quotas, the pipes of fd holds, the TTL timers of
 * connection and fd holds, exit on idle. This daemon's own holds are in its
 * LockTable too, as the index of who holds what here (Unlock, quotas, a
 * connection that closes); every decision is etcd's.
 *
 * What users see differently from the directory backend: fencing tokens
 * are etcd revisions (strictly increasing across the cluster); a waiting
 * request waits in etcd's order (WaiterCount counts this daemon's waiting
 * calls, LockCount the resources it holds); Owner and ListLocks read etcd,
 * and a hold of another host shows its sender as "NAME@HOSTNAME"; a failure
 * to reach etcd is a Storage error that names etcd; at start the daemon
 * takes back this machine's persistent holds, and the connection holds of
 * an earlier daemon of this machine whose holder is still on the same bus
 * (moved onto the new lease; those whose holder left are deleted at once;
 * those whose key expired meanwhile are told LockLost, from the record
 * each connection hold leaves in the runtime directory), and the fd holds
 * whose pipe came back from systemd's fd store; the earlier daemon's
 * waiting requests are deleted; a clean stop leaves the holds it can on
 * the lease for the next daemon, and deletes the rest. Another lockbusd of
 * the machine (another bus) keeps its own volatile holds. */

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "manager.h"

/* error 0 or a negative errno with etcd's message (else NULL). */
typedef void (*ClusterBackendDone)(Manager *m, int error, const char *error_message, void *userdata);
typedef void (*ClusterBackendRefreshDone)(Manager *m, int error, const char *error_message, uint64_t expires_usec,
                                          void *userdata);
/* n_or_error: how many holds were released, or the first error. */
typedef void (*ClusterBackendBreakDone)(Manager *m, int n_or_error, const char *error_message, void *userdata);
/* holds: Hold *, sorted by resource, then grant order (borrowed). */
typedef void (*ClusterBackendQueryDone)(Manager *m, int error, const char *error_message, GPtrArray *holds,
                                        void *userdata);

typedef struct ClusterBackendConfig {
        char **endpoints;               /* http(s)://host:port, at least one */
        const char *prefix;             /* of every key, e.g. "/lockbus" */
        uint64_t lease_ttl_usec;        /* of the daemon's lease */
        const char *machine_id;         /* 32 hex digits */
        const char *hostname;
        const char *ca_file;            /* TLS files (etcd.h, EtcdTlsOptions), NULL: unset */
        const char *cert_file;
        const char *key_file;
        const char *user;               /* authentication (etcd.h, etcd_client_set_auth()), NULL: none */
        const char *password;           /* with user; never logged */
} ClusterBackendConfig;

/* Connects, takes a lease and this machine's persistent holds and still
 * connected connection holds (into the manager's table), running the event
 * loop until done or failed. */
int cluster_backend_new(Manager *m, const ClusterBackendConfig *config, ClusterBackend **ret);
ClusterBackend *cluster_backend_free(ClusterBackend *b);

/* A clean exit, running the event loop until etcd answers or a short while
 * passed: the keys of requests under way and of fd holds not in the fd
 * store are deleted; the connection holds and the other fd holds stay on
 * the lease for the next daemon of this machine (a restart keeps them, as
 * in directory mode); with none of those the lease is revoked. */
void cluster_backend_stop(ClusterBackend *b);

/* "etcd (http://…, …)", for messages. */
const char *cluster_backend_where(const ClusterBackend *b);

/* manager_submit() once the request passed the checks common to both
 * backends. */
void cluster_backend_submit(ClusterBackend *b, AcquireRequest *req);

/* The requests of a peer that left are withdrawn (nobody is answered). */
void cluster_backend_peer_gone(ClusterBackend *b, const char *sender);

/* Requests of this daemon under way (being decided or waiting in etcd):
 * all, and those of one uid. */
unsigned cluster_backend_pending_count(const ClusterBackend *b);
unsigned cluster_backend_pending_count_of_uid(const ClusterBackend *b, uid_t uid);

/* A hold that ended with its owner (connection closed, fd closed, TTL):
 * its key is deleted in the background. The caller frees the Hold. */
void cluster_backend_forget(ClusterBackend *b, Hold *h);

/* Unlock by the owner (caller: the call's sender, whose later calls on the
 * resource wait for it): callback(m, 0, NULL, userdata) once etcd deleted
 * the key (the Hold is then out of the table and freed); -ENOENT if the key
 * was gone already (another host broke it; the Hold is freed too); else
 * the error and etcd's message, and the hold stays. A second Unlock (or a
 * Refresh) while one is under way waits for it, and then gets -ENOLCK if it
 * took the hold away (not locked, as on one host), or is carried out if it
 * failed; -EINPROGRESS while a Break of the hold is under way. */
void cluster_backend_unlock(ClusterBackend *b, Hold *h, const char *caller, ClusterBackendDone callback,
                            void *userdata);

/* Refresh: the new expiry (CLOCK_REALTIME µs, 0 without TTL). */
void cluster_backend_refresh(ClusterBackend *b, Hold *h, ClusterBackendRefreshDone callback, void *userdata);

/* Break: every hold on the resource, of every host; callback gets how many
 * were released, or the first error. */
void cluster_backend_break(ClusterBackend *b, const char *resource, ClusterBackendBreakDone callback, void *userdata);

/* Owner (resource) or ListLocks (resource NULL): the holds read from etcd. */
void cluster_backend_query(ClusterBackend *b, const char *resource, ClusterBackendQueryDone callback, void *userdata);
