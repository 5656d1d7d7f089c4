/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <string.h>

#include "etcd-sync.h"
#include "etcd-test.h"

static void sync_kv_free(SyncKeyValue *kv) {
        g_bytes_unref(kv->key);
        g_bytes_unref(kv->value);
        g_free(kv);
}

void sync_result_clear(SyncResult *r) {
        g_free(r->message);
        if (r->op_types)
                g_array_unref(r->op_types);
        if (r->kvs)
                g_ptr_array_unref(r->kvs);
        if (r->reply)
                json_node_unref(r->reply);
        *r = (SyncResult) {};
}

void sync_fixture_setup(SyncFixture *f, gconstpointer data) {
        g_assert_cmpint(sd_event_new(&f->event), >=, 0);
}

void sync_fixture_teardown(SyncFixture *f, gconstpointer data) {
        sync_result_clear(&f->r);
        sd_event_unref(f->event);
}

/* Common to every callback: called once, never re-entrantly. */
static void record(SyncResult *r, int error, const char *error_message) {
        r->n_callbacks++;
        g_assert_cmpuint(r->n_callbacks, ==, 1);
        r->done = true;
        r->error = error;
        r->message = g_strdup(error_message);
        if (error < 0)
                g_assert_nonnull(error_message);
        else
                g_assert_null(error_message);
}

static void copy_kvs(SyncResult *r, const EtcdKeyValue *kvs, size_t n) {
        r->kvs = g_ptr_array_new_with_free_func((GDestroyNotify) sync_kv_free);
        for (size_t i = 0; i < n; i++) {
                SyncKeyValue *kv = g_new0(SyncKeyValue, 1);

                /* The promised NUL after the bytes. */
                g_assert_cmpint(kvs[i].key[kvs[i].key_size], ==, '\0');
                g_assert_cmpint(kvs[i].value[kvs[i].value_size], ==, '\0');
                kv->key = g_bytes_new(kvs[i].key, kvs[i].key_size + 1);
                kv->value = g_bytes_new(kvs[i].value, kvs[i].value_size + 1);
                kv->create_revision = kvs[i].create_revision;
                kv->mod_revision = kvs[i].mod_revision;
                kv->version = kvs[i].version;
                kv->lease = kvs[i].lease;
                g_ptr_array_add(r->kvs, kv);
        }
}

static int finish(sd_event *e, int start, SyncResult *r) {
        g_assert_cmpint(start, ==, 0);
        g_assert_false(r->done);
        test_run_until(e, &r->done, SYNC_TIMEOUT_USEC);
        return r->error;
}

static void on_lease_grant(EtcdCall *call, int error, const char *error_message, int64_t lease_id, int64_t ttl,
                           void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        r->lease_id = lease_id;
        r->ttl = ttl;
}

int sync_lease_grant(sd_event *e, EtcdClient *c, int64_t ttl, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_lease_grant(c, ttl, on_lease_grant, r, NULL), r);
}

static void on_keepalive(EtcdCall *call, int error, const char *error_message, int64_t ttl, void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        r->ttl = ttl;
}

int sync_lease_keepalive(sd_event *e, EtcdClient *c, int64_t lease, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_lease_keepalive(c, lease, on_keepalive, r, NULL), r);
}

static void on_revision(EtcdCall *call, int error, const char *error_message, int64_t revision, void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        r->revision = revision;
}

int sync_lease_revoke(sd_event *e, EtcdClient *c, int64_t lease, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_lease_revoke(c, lease, on_revision, r, NULL), r);
}

int sync_put_bytes(sd_event *e, EtcdClient *c, const void *key, size_t key_size, const void *value,
                   size_t value_size, int64_t lease, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_put(c, key, key_size, value, value_size, lease, on_revision, r, NULL), r);
}

int sync_put(sd_event *e, EtcdClient *c, const char *key, const char *value, int64_t lease, SyncResult *r) {
        return sync_put_bytes(e, c, key, strlen(key), value, strlen(value), lease, r);
}

static void on_delete(EtcdCall *call, int error, const char *error_message, int64_t revision, int64_t deleted,
                      void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        r->revision = revision;
        r->count = deleted;
}

int sync_delete(sd_event *e, EtcdClient *c, const char *key, bool prefix, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_delete(c, key, strlen(key), prefix, on_delete, r, NULL), r);
}

static void on_range(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                     void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        if (error < 0) {
                g_assert_null(result);
                return;
        }
        r->revision = result->revision;
        r->count = result->count;
        r->more = result->more;
        copy_kvs(r, result->kvs, result->n_kvs);
}

int sync_range(sd_event *e, EtcdClient *c, const void *key, size_t key_size, const EtcdRangeOptions *options,
               SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_range(c, key, key_size, options, on_range, r, NULL), r);
}

static void on_txn(EtcdCall *call, int error, const char *error_message, const EtcdTxnResult *result,
                   void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        if (error < 0) {
                g_assert_null(result);
                return;
        }
        r->revision = result->revision;
        r->succeeded = result->succeeded;
        r->op_types = g_array_new(false, false, sizeof(EtcdOpType));
        for (size_t i = 0; i < result->n_responses; i++) {
                g_array_append_val(r->op_types, result->responses[i].type);
                if (result->responses[i].type == ETCD_OP_RANGE && !r->kvs) {
                        copy_kvs(r, result->responses[i].kvs, result->responses[i].n_kvs);
                        r->count = result->responses[i].count;
                } else if (result->responses[i].type == ETCD_OP_DELETE)
                        r->count = result->responses[i].count;
        }
}

int sync_txn(sd_event *e, EtcdClient *c, const EtcdTxn *t, SyncResult *r) {
        sync_result_clear(r);
        return finish(e, etcd_txn(c, t, on_txn, r, NULL), r);
}

static void on_call(EtcdCall *call, int error, const char *error_message, JsonNode *reply, void *userdata) {
        SyncResult *r = userdata;

        record(r, error, error_message);
        if (error < 0)
                g_assert_null(reply);
        else
                r->reply = json_node_ref(reply);
}

int sync_call(sd_event *e, EtcdClient *c, const char *path, const char *request_json, SyncResult *r) {
        g_autoptr(JsonNode) request = json_from_string(request_json, NULL);

        g_assert_nonnull(request);
        sync_result_clear(r);
        return finish(e, etcd_call(c, path, request, on_call, r, NULL), r);
}

const SyncKeyValue *sync_kv(const SyncResult *r, unsigned i) {
        g_assert_nonnull(r->kvs);
        g_assert_cmpuint(i, <, r->kvs->len);
        return r->kvs->pdata[i];
}

const char *sync_kv_key(const SyncResult *r, unsigned i) {
        return g_bytes_get_data(sync_kv(r, i)->key, NULL);
}

const char *sync_kv_value(const SyncResult *r, unsigned i) {
        return g_bytes_get_data(sync_kv(r, i)->value, NULL);
}

/* ---- watches ---------------------------------------------------------------- */

static void on_watch_created(EtcdWatch *watch, int64_t revision, void *userdata) {
        WatchRecorder *w = userdata;

        g_assert_true(watch == w->watch);
        g_assert_false(w->created);
        w->created = true;
        w->created_revision = revision;
}

static void on_watch_event(EtcdWatch *watch, const EtcdEvent *event, void *userdata) {
        WatchRecorder *w = userdata;

        g_assert_true(watch == w->watch);
        g_assert_false(w->ended);
        w->n_events++;
        g_array_append_val(w->revisions, event->kv.mod_revision);
        if (event->type == ETCD_EVENT_PUT)
                g_string_append_printf(w->log, "PUT:%s=%s", event->kv.key, event->kv.value);
        else
                g_string_append_printf(w->log, "DELETE:%s", event->kv.key);
        if (event->prev_kv)
                g_string_append_printf(w->log, "<prev=%s>", event->prev_kv->value);
        g_string_append_c(w->log, ' ');

        if (w->cancel_after_first) {
                etcd_watch_cancel(watch);
                w->watch = NULL;
                w->ended = true;
        }
}

static void on_watch_error(EtcdWatch *watch, int error, const char *error_message, void *userdata) {
        WatchRecorder *w = userdata;

        g_assert_true(watch == w->watch);
        g_assert_cmpint(error, <, 0);
        g_assert_nonnull(error_message);
        w->n_errors++;
        g_assert_cmpuint(w->n_errors, ==, 1);
        w->ended = true;
        w->error = error;
        w->message = g_strdup(error_message);
        w->watch = NULL; /* freed when this returns */
}

void watch_recorder_start(WatchRecorder *w, EtcdClient *c, const char *key, const EtcdWatchOptions *options) {
        static const EtcdWatchCallbacks callbacks = {
                .created = on_watch_created,
                .event = on_watch_event,
                .error = on_watch_error,
        };

        w->log = g_string_new(NULL);
        w->revisions = g_array_new(false, false, sizeof(int64_t));
        g_assert_cmpint(etcd_watch(c, key, strlen(key), options, &callbacks, w, &w->watch), ==, 0);
}

void watch_recorder_clear(WatchRecorder *w) {
        etcd_watch_cancel(w->watch);
        if (w->log)
                g_string_free(w->log, true);
        if (w->revisions)
                g_array_unref(w->revisions);
        g_free(w->message);
        *w = (WatchRecorder) {};
}
