/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The etcd client's calls made synchronous for tests: each starts the call,
 * checks that its callback did not run inside the starting function, and
 * runs the loop until it did. Results are copied out of the callbacks. */

#include <stdbool.h>
#include <stdint.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd.h"

#define SYNC_TIMEOUT_USEC (30U * G_USEC_PER_SEC)

typedef struct SyncKeyValue {
        GBytes *key;
        GBytes *value;
        int64_t create_revision;
        int64_t mod_revision;
        int64_t version;
        int64_t lease;
} SyncKeyValue;

typedef struct SyncResult {
        bool done;
        unsigned n_callbacks;
        int error;
        char *message;
        int64_t revision;
        int64_t lease_id;
        int64_t ttl;
        int64_t count;                  /* range count, deleted */
        bool more;
        bool succeeded;                 /* txn */
        GArray *op_types;               /* txn: EtcdOpType of each response */
        GPtrArray *kvs;                 /* SyncKeyValue *: range, or the txn's first range */
        JsonNode *reply;                /* generic */
} SyncResult;

void sync_result_clear(SyncResult *r);

/* The g_test fixture of a program whose cases make calls on a loop of
 * their own: a new loop, and a SyncResult cleared at the end. */
typedef struct SyncFixture {
        sd_event *event;
        SyncResult r;
} SyncFixture;
void sync_fixture_setup(SyncFixture *f, gconstpointer data);
void sync_fixture_teardown(SyncFixture *f, gconstpointer data);

int sync_lease_grant(sd_event *e, EtcdClient *c, int64_t ttl, SyncResult *r);
int sync_lease_keepalive(sd_event *e, EtcdClient *c, int64_t lease, SyncResult *r);
int sync_lease_revoke(sd_event *e, EtcdClient *c, int64_t lease, SyncResult *r);
int sync_put(sd_event *e, EtcdClient *c, const char *key, const char *value, int64_t lease, SyncResult *r);
int sync_put_bytes(sd_event *e, EtcdClient *c, const void *key, size_t key_size, const void *value,
                   size_t value_size, int64_t lease, SyncResult *r);
int sync_delete(sd_event *e, EtcdClient *c, const char *key, bool prefix, SyncResult *r);
int sync_range(sd_event *e, EtcdClient *c, const void *key, size_t key_size, const EtcdRangeOptions *options,
               SyncResult *r);
int sync_txn(sd_event *e, EtcdClient *c, const EtcdTxn *t, SyncResult *r);
int sync_call(sd_event *e, EtcdClient *c, const char *path, const char *request_json, SyncResult *r);

/* The kv as a string (keys and values of tests are text). */
const char *sync_kv_key(const SyncResult *r, unsigned i);
const char *sync_kv_value(const SyncResult *r, unsigned i);
const SyncKeyValue *sync_kv(const SyncResult *r, unsigned i);

/* A watch that logs "PUT:key=value@rev" / "DELETE:key@rev" (with
 * "<prev=value>" when etcd sent the previous kv) to a string. */
typedef struct WatchRecorder {
        EtcdWatch *watch;
        GString *log;
        GArray *revisions;              /* int64_t: each event's mod_revision */
        unsigned n_events;
        bool created;
        int64_t created_revision;
        bool ended;
        unsigned n_errors;
        int error;
        char *message;
        bool cancel_after_first;
} WatchRecorder;

void watch_recorder_start(WatchRecorder *w, EtcdClient *c, const char *key, const EtcdWatchOptions *options);
void watch_recorder_clear(WatchRecorder *w);
