/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The etcd client without etcd: its parsers on canned replies and streams
 * (what the gateway of etcd 3.4 sends, and what it must never crash on),
 * its endpoint rules, and its transport against fake HTTP servers that run
 * on the test's own sd-event loop: malformed replies, members that hang,
 * UNAVAILABLE and failover, watch streams cut at odd places, and calls
 * cancelled or a client freed while requests are in flight. */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib.h>
#include <systemd/sd-event.h>

#include "etcd-test.h"
#include "etcd.h"

#define SEC G_USEC_PER_SEC

/* ---- canned parsing ------------------------------------------------------- */

static JsonNode *json(const char *text) {
        g_autoptr(GError) error = NULL;
        JsonNode *n = json_from_string(text, &error);

        g_assert_no_error(error);
        g_assert_nonnull(n);
        return n;
}

static void test_parse_int64(void) {
        static const struct {
                const char *json;
                int r;
                int64_t value;
        } cases[] = {
                { "{\"v\":\"12\"}", 0, 12 },
                { "{\"v\":12}", 0, 12 },
                { "{}", 0, 0 },
                { "{\"v\":null}", 0, 0 },
                { "{\"v\":\"-7\"}", 0, -7 },
                { "{\"v\":\"9223372036854775807\"}", 0, INT64_MAX },
                { "{\"v\":\"-9223372036854775808\"}", 0, INT64_MIN },
                { "{\"v\":\"9223372036854775808\"}", -EBADMSG, 0 },
                { "{\"v\":\"99999999999999999999999\"}", -EBADMSG, 0 },
                { "{\"v\":\"\"}", -EBADMSG, 0 },
                { "{\"v\":\"-\"}", -EBADMSG, 0 },
                { "{\"v\":\" 12\"}", -EBADMSG, 0 },
                { "{\"v\":\"12a\"}", -EBADMSG, 0 },
                { "{\"v\":\"0x10\"}", -EBADMSG, 0 },
                { "{\"v\":\"+1\"}", -EBADMSG, 0 },
                { "{\"v\":1.5}", -EBADMSG, 0 },
                { "{\"v\":true}", -EBADMSG, 0 },
                { "{\"v\":[1]}", -EBADMSG, 0 },
                { "{\"v\":{}}", -EBADMSG, 0 },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(JsonNode) n = json(cases[i].json);
                int64_t v = 4242;
                int r;

                r = etcd_parse_int64(json_node_get_object(n), "v", &v);
                g_assert_cmpint(r, ==, cases[i].r);
                if (r == 0)
                        g_assert_cmpint(v, ==, cases[i].value);
        }
}

static int parse_reply(long status, const char *body, JsonNode **ret_reply, char **ret_message) {
        *ret_reply = NULL;
        *ret_message = NULL;
        return etcd_parse_reply(status, body, strlen(body), ret_reply, ret_message);
}

static void test_parse_reply(void) {
        static const struct {
                long status;
                const char *body;
                int r;
                const char *message;    /* a part of it */
        } cases[] = {
                /* Plain replies, and a streaming path's {"result":…} unwrapped. */
                { 200, "{\"header\":{\"revision\":\"2\"}}", 0, NULL },
                { 200, "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"5\",\"TTL\":\"30\"}}\n", 0, NULL },
                /* A LeaseGrantResponse has an "error" field of its own. */
                { 200, "{\"header\":{\"revision\":\"2\"},\"ID\":\"5\",\"error\":\"\"}", 0, NULL },
                /* etcd errors, unary and streamed, with the HTTP statuses the gateway uses. */
                { 404, "{\"error\":\"etcdserver: requested lease not found\","
                       "\"message\":\"etcdserver: requested lease not found\",\"code\":5}",
                  -ENOENT, "requested lease not found" },
                { 400, "{\"error\":\"etcdserver: mvcc: required revision has been compacted\","
                       "\"message\":\"etcdserver: mvcc: required revision has been compacted\",\"code\":11}",
                  -ERANGE, "compacted" },
                { 400, "{\"error\":\"illegal base64 data at input byte 0\",\"code\":3}", -EINVAL, "illegal base64" },
                { 500, "{\"error\":\"invalid character 'g'\",\"message\":\"invalid character 'g'\",\"code\":2}",
                  -EIO, "invalid character" },
                { 412, "{\"error\":\"x\",\"message\":\"etcdserver: not leader\",\"code\":\"9\"}", -ESTALE,
                  "not leader" },
                { 200, "{\"error\":{\"grpc_code\":5,\"http_code\":404,\"message\":\"lease gone\","
                       "\"http_status\":\"Not Found\"}}", -ENOENT, "lease gone" },
                { 200, "{\"result\":{\"header\":{}}}\n{\"error\":{\"grpc_code\":7,\"message\":\"denied\"}}",
                  -EACCES, "denied" },
                { 400, "{\"error\":\"x\",\"code\":999}", -EIO, NULL },
                /* UNAVAILABLE and 5xx: fail over. */
                { 503, "{\"error\":\"etcdserver: no leader\",\"message\":\"etcdserver: no leader\",\"code\":14}", 1,
                  "no leader" },
                { 200, "{\"error\":{\"grpc_code\":14,\"message\":\"request timed out\"}}", 1, "timed out" },
                { 502, "<html>Bad Gateway</html>", 1, "HTTP 502" },
                { 503, "", 1, "HTTP 503" },
                /* Not what etcd sends. */
                { 404, "Not Found\n", -EBADMSG, "unexpected HTTP status 404" },
                { 200, "", -EBADMSG, "empty" },
                { 200, "   \n", -EBADMSG, "empty" },
                { 200, "not json", -EBADMSG, "unexpected byte" },
                { 200, "[1,2]", -EBADMSG, NULL },
                { 200, "{\"header\":", -EBADMSG, "ends inside" },
                { 200, "{\"a\":1}{\"b\":2}", -EBADMSG, "2 JSON objects" },
                { 200, "{\"a\":tru}", -EBADMSG, "not JSON" },
                { 200, "{\"error\":[1]}", -EBADMSG, "neither" },
                { 200, "{\"error\":\"x\"}", -EBADMSG, "without a code" },
                { 200, "{\"error\":\"x\",\"code\":0}", -EBADMSG, "code 0" },
                { 200, "{\"result\":5}", -EBADMSG, "not an object" },
                { 400, "{\"header\":{}}", -EBADMSG, "unexpected HTTP status 400" },
        };

        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autoptr(JsonNode) reply = NULL;
                g_autofree char *message = NULL;
                int r;

                r = parse_reply(cases[i].status, cases[i].body, &reply, &message);
                if (r != cases[i].r)
                        g_error("case %zu (%s): %d (%s), expected %d", i, cases[i].body, r, strempty(message),
                                cases[i].r);
                if (r == 0) {
                        g_assert_nonnull(reply);
                        g_assert_true(JSON_NODE_HOLDS_OBJECT(reply));
                        g_assert_false(json_object_has_member(json_node_get_object(reply), "result"));
                } else {
                        g_assert_null(reply);
                        g_assert_nonnull(message);
                        if (cases[i].message && !strstr(message, cases[i].message))
                                g_error("case %zu: message '%s' lacks '%s'", i, message, cases[i].message);
                }
        }

        /* A NUL byte inside the body (strlen() would stop at it). */
        {
                static const char body[] = "{\"a\":\"x\0y\"}";
                g_autoptr(JsonNode) reply = NULL;
                g_autofree char *message = NULL;

                g_assert_cmpint(etcd_parse_reply(200, body, sizeof body - 1, &reply, &message), ==, -EBADMSG);
                g_assert_nonnull(strstr(message, "NUL"));
        }
}

static void test_parse_range(void) {
        /* Captured from etcd 3.4, plus a key and a value that are not text. */
        static const char good[] =
                "{\"header\":{\"cluster_id\":\"15118495548433857066\",\"member_id\":\"13668033151171901709\","
                "\"revision\":\"7\",\"raft_term\":\"2\"},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\","
                "\"mod_revision\":\"5\",\"version\":\"3\",\"value\":\"YmFy\",\"lease\":\"4111120171719773445\"},"
                "{\"key\":\"AP8K\",\"create_revision\":6,\"mod_revision\":\"6\",\"version\":\"1\"}],"
                "\"count\":\"2\",\"more\":true}";
        static const struct {
                const char *json;
                const char *message;
        } bad[] = {
                { "{\"kvs\":[]}", "no header" },
                { "{\"header\":[]}", "header" },
                { "{\"header\":{\"revision\":\"x\"}}", "revision" },
                { "{\"header\":{},\"kvs\":{}}", "kvs" },
                { "{\"header\":{},\"kvs\":[1]}", "not an object" },
                { "{\"header\":{},\"kvs\":[{\"key\":\"!!!!\"}]}", "base64" },
                { "{\"header\":{},\"kvs\":[{\"key\":\"Zm9\"}]}", "base64" },
                { "{\"header\":{},\"kvs\":[{\"key\":\"Z=9v\"}]}", "base64" },
                { "{\"header\":{},\"kvs\":[{\"key\":5}]}", "not a string" },
                { "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\",\"lease\":\"1e3\"}]}", "lease" },
                { "{\"header\":{},\"kvs\":[{\"key\":\"Zm9v\"},{\"key\":\"Zm9v\",\"version\":[]}]}", "version" },
                { "{\"header\":{},\"count\":false}", "count" },
                { "{\"header\":{},\"more\":\"yes\"}", "more" },
        };
        _cleanup_(etcd_range_result_freep) EtcdRangeResult *result = NULL;
        g_autoptr(JsonNode) n = json(good);
        g_autofree char *message = NULL;

        g_assert_cmpint(etcd_parse_range_result(n, &result, &message), ==, 0);
        g_assert_cmpint(result->revision, ==, 7);
        g_assert_cmpint(result->count, ==, 2);
        g_assert_true(result->more);
        g_assert_cmpuint(result->n_kvs, ==, 2);
        g_assert_cmpmem(result->kvs[0].key, result->kvs[0].key_size, "foo", 3);
        g_assert_cmpmem(result->kvs[0].value, result->kvs[0].value_size, "bar", 3);
        g_assert_cmpint(result->kvs[0].create_revision, ==, 2);
        g_assert_cmpint(result->kvs[0].mod_revision, ==, 5);
        g_assert_cmpint(result->kvs[0].version, ==, 3);
        g_assert_cmpint(result->kvs[0].lease, ==, INT64_C(4111120171719773445));
        g_assert_cmpmem(result->kvs[1].key, result->kvs[1].key_size, "\0\377\n", 3);
        g_assert_cmpint(result->kvs[1].key[3], ==, '\0');
        g_assert_cmpuint(result->kvs[1].value_size, ==, 0);
        g_assert_cmpstr(result->kvs[1].value, ==, "");
        g_assert_cmpint(result->kvs[1].create_revision, ==, 6);
        g_assert_cmpint(result->kvs[1].lease, ==, 0);

        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                _cleanup_(etcd_range_result_freep) EtcdRangeResult *r = NULL;
                g_autoptr(JsonNode) b = json(bad[i].json);
                g_autofree char *m = NULL;

                g_assert_cmpint(etcd_parse_range_result(b, &r, &m), ==, -EBADMSG);
                g_assert_null(r);
                if (!strstr(m, bad[i].message))
                        g_error("case %zu: message '%s' lacks '%s'", i, m, bad[i].message);
        }
}

static void test_parse_txn(void) {
        /* A lost create-if-absent, then a won delete, as etcd 3.4 sent them. */
        static const char lost[] =
                "{\"header\":{\"revision\":\"5\"},\"responses\":[{\"response_range\":{\"header\":{\"revision\":\"5\"},"
                "\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"5\",\"mod_revision\":\"5\",\"version\":\"1\","
                "\"value\":\"YQ==\",\"lease\":\"77\"}],\"count\":\"1\"}}]}";
        static const char won[] =
                "{\"header\":{\"revision\":\"6\"},\"succeeded\":true,\"responses\":[{\"response_put\":"
                "{\"header\":{\"revision\":\"6\"}}},{\"response_delete_range\":{\"header\":{\"revision\":\"6\"},"
                "\"deleted\":\"1\"}}]}";
        static const char *const bad[] = {
                "{\"header\":{},\"succeeded\":1}",
                "{\"header\":{},\"responses\":{}}",
                "{\"header\":{},\"responses\":[[]]}",
                "{\"header\":{},\"responses\":[{\"response_txn\":{}}]}",
                "{\"header\":{},\"responses\":[{\"response_range\":{\"kvs\":[{\"key\":\"?\"}]}}]}",
                "{\"header\":{},\"responses\":[{\"response_put\":{}},{\"response_delete_range\":{\"deleted\":\"a\"}}]}",
                "{\"succeeded\":true}",
        };
        _cleanup_(etcd_txn_result_freep) EtcdTxnResult *a = NULL, *b = NULL;
        g_autoptr(JsonNode) na = json(lost), nb = json(won);
        g_autofree char *message = NULL;

        g_assert_cmpint(etcd_parse_txn_result(na, &a, &message), ==, 0);
        g_assert_false(a->succeeded);
        g_assert_cmpint(a->revision, ==, 5);
        g_assert_cmpuint(a->n_responses, ==, 1);
        g_assert_cmpint(a->responses[0].type, ==, ETCD_OP_RANGE);
        g_assert_cmpuint(a->responses[0].n_kvs, ==, 1);
        g_assert_cmpint(a->responses[0].count, ==, 1);
        g_assert_cmpmem(a->responses[0].kvs[0].value, a->responses[0].kvs[0].value_size, "a", 1);
        g_assert_cmpint(a->responses[0].kvs[0].lease, ==, 77);

        g_assert_cmpint(etcd_parse_txn_result(nb, &b, &message), ==, 0);
        g_assert_true(b->succeeded);
        g_assert_cmpuint(b->n_responses, ==, 2);
        g_assert_cmpint(b->responses[0].type, ==, ETCD_OP_PUT);
        g_assert_cmpint(b->responses[1].type, ==, ETCD_OP_DELETE);
        g_assert_cmpint(b->responses[1].count, ==, 1);

        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                _cleanup_(etcd_txn_result_freep) EtcdTxnResult *r = NULL;
                g_autoptr(JsonNode) n = json(bad[i]);
                g_autofree char *m = NULL;

                g_assert_cmpint(etcd_parse_txn_result(n, &r, &m), ==, -EBADMSG);
                g_assert_null(r);
                g_assert_nonnull(m);
        }
}

static int parse_watch(const char *text, GPtrArray **ret_events, bool *ret_created, int64_t *ret_revision,
                       char **ret_message) {
        g_autoptr(JsonNode) n = json(text);

        *ret_events = NULL;
        *ret_message = NULL;
        return etcd_parse_watch_message(n, ret_events, ret_created, ret_revision, ret_message);
}

static void test_parse_watch_message(void) {
        g_autoptr(GPtrArray) events = NULL;
        g_autofree char *message = NULL;
        const EtcdEvent *e;
        int64_t revision;
        bool created;

        /* As etcd 3.4 streams them: created, then events (PUT has no "type"). */
        g_assert_cmpint(parse_watch("{\"result\":{\"header\":{\"revision\":\"2\",\"raft_term\":\"2\"},"
                                    "\"created\":true}}", &events, &created, &revision, &message), ==, 0);
        g_assert_true(created);
        g_assert_cmpint(revision, ==, 2);
        g_assert_cmpuint(events->len, ==, 0);
        g_clear_pointer(&events, g_ptr_array_unref);

        g_assert_cmpint(parse_watch("{\"result\":{\"header\":{\"revision\":\"4\"},\"events\":["
                                    "{\"kv\":{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"3\","
                                    "\"version\":\"2\",\"value\":\"YmF6\"},\"prev_kv\":{\"key\":\"Zm9v\","
                                    "\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\","
                                    "\"value\":\"YmFy\"}},"
                                    "{\"type\":\"DELETE\",\"kv\":{\"key\":\"Zm9v\",\"mod_revision\":\"4\"}}]}}",
                                    &events, &created, &revision, &message), ==, 0);
        g_assert_false(created);
        g_assert_cmpuint(events->len, ==, 2);
        e = events->pdata[0];
        g_assert_cmpint(e->type, ==, ETCD_EVENT_PUT);
        g_assert_cmpint(e->revision, ==, 4);
        g_assert_cmpmem(e->kv.key, e->kv.key_size, "foo", 3);
        g_assert_cmpmem(e->kv.value, e->kv.value_size, "baz", 3);
        g_assert_cmpint(e->kv.mod_revision, ==, 3);
        g_assert_nonnull(e->prev_kv);
        g_assert_cmpmem(e->prev_kv->value, e->prev_kv->value_size, "bar", 3);
        e = events->pdata[1];
        g_assert_cmpint(e->type, ==, ETCD_EVENT_DELETE);
        g_assert_cmpint(e->kv.mod_revision, ==, 4);
        g_assert_null(e->prev_kv);
        g_clear_pointer(&events, g_ptr_array_unref);

        /* A progress notification: nothing but a header. */
        g_assert_cmpint(parse_watch("{\"result\":{\"header\":{\"revision\":\"9\"}}}", &events, &created, &revision,
                                    &message), ==, 0);
        g_assert_cmpuint(events->len, ==, 0);
        g_assert_cmpint(revision, ==, 9);
        g_clear_pointer(&events, g_ptr_array_unref);

        /* The ends of a watch. */
        g_assert_cmpint(parse_watch("{\"result\":{\"header\":{\"raft_term\":\"2\"},\"canceled\":true,"
                                    "\"compact_revision\":\"3\"}}", &events, &created, &revision, &message),
                        ==, -ERANGE);
        g_assert_nonnull(strstr(message, "compacted"));
        g_clear_pointer(&message, g_free);
        g_assert_cmpint(parse_watch("{\"result\":{\"canceled\":true,\"cancel_reason\":\"permission denied\"}}",
                                    &events, &created, &revision, &message), ==, -ECANCELED);
        g_assert_nonnull(strstr(message, "permission denied"));
        g_clear_pointer(&message, g_free);
        g_assert_cmpint(parse_watch("{\"error\":{\"grpc_code\":1,\"http_code\":408,\"message\":\"grpc: the client "
                                    "connection is closing\",\"http_status\":\"Request Timeout\"}}",
                                    &events, &created, &revision, &message), ==, -ECONNRESET);
        g_assert_nonnull(strstr(message, "connection is closing"));
        g_clear_pointer(&message, g_free);
        g_assert_cmpint(parse_watch("{\"error\":{\"grpc_code\":11,\"message\":\"x\"}}", &events, &created,
                                    &revision, &message), ==, -ERANGE);
        g_clear_pointer(&message, g_free);

        /* Malformed. */
        static const char *const bad[] = {
                "{}",
                "{\"result\":[]}",
                "{\"result\":{\"created\":\"yes\"}}",
                "{\"result\":{\"events\":{}}}",
                "{\"result\":{\"events\":[{\"type\":\"EXPIRE\",\"kv\":{}}]}}",
                "{\"result\":{\"events\":[{\"type\":\"PUT\"}]}}",
                "{\"result\":{\"events\":[{\"kv\":{\"key\":\"%%%%\"}}]}}",
                "{\"result\":{\"events\":[{\"kv\":{\"key\":\"Zm9v\"},\"prev_kv\":{\"mod_revision\":\"q\"}}]}}",
                "{\"result\":{\"events\":[{\"kv\":{}},7]}}",
                "{\"result\":{\"header\":{\"revision\":{}}}}",
        };
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                g_assert_cmpint(parse_watch(bad[i], &events, &created, &revision, &message), ==, -EBADMSG);
                g_assert_null(events);
                g_assert_nonnull(message);
                g_clear_pointer(&message, g_free);
        }
}

/* Feeds text in pieces of `step` bytes; returns the objects or the error. */
static int split(const char *text, size_t size, size_t step, GPtrArray **ret, bool *ret_empty, char **ret_message) {
        _cleanup_(etcd_json_splitter_freep) EtcdJsonSplitter *s = etcd_json_splitter_new();
        g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func((GDestroyNotify) json_node_unref);
        int r;

        for (size_t i = 0; i < size; i += step) {
                r = etcd_json_splitter_feed(s, text + i, MIN(step, size - i), out, ret_message);
                if (r < 0)
                        return r;
        }
        *ret_empty = etcd_json_splitter_is_empty(s);
        *ret = g_steal_pointer(&out);
        return 0;
}

static void test_parse_splitter(void) {
        /* What the gateway's chunks carry: objects and newlines, the last
         * (an error) without one. Braces and quotes inside strings. */
        static const char stream[] =
                "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}\n"
                "{\"result\":{\"events\":[{\"kv\":{\"key\":\"e30=\",\"value\":\"W10=\"}}],\"x\":\"}{\\\"\\\\\"}}\r\n"
                "\n"
                "{\"error\":{\"grpc_code\":1,\"message\":\"a [ { \\\" string\"}}";
        g_autofree char *deep = NULL;
        g_autofree char *message = NULL;
        bool empty = false;

        for (size_t step = 1; step <= sizeof stream; step++) {
                g_autoptr(GPtrArray) out = NULL;
                JsonObject *o;

                g_assert_cmpint(split(stream, sizeof stream - 1, step, &out, &empty, &message), ==, 0);
                g_assert_true(empty);
                g_assert_cmpuint(out->len, ==, 3);
                o = json_node_get_object(out->pdata[1]);
                g_assert_cmpstr(json_object_get_string_member(json_object_get_object_member(o, "result"), "x"), ==,
                                "}{\"\\");
                o = json_node_get_object(out->pdata[2]);
                g_assert_cmpstr(json_object_get_string_member(json_object_get_object_member(o, "error"), "message"),
                                ==, "a [ { \" string");
        }

        /* Half an object is kept for the next feed. */
        {
                g_autoptr(GPtrArray) out = NULL;

                g_assert_cmpint(split(stream, 30, 7, &out, &empty, &message), ==, 0);
                g_assert_false(empty);
                g_assert_cmpuint(out->len, ==, 0);
        }

        /* Anything but whitespace between objects, and bad objects. */
        static const char *const bad[] = {
                "x",
                "{} x",
                "{}]",
                "[{}]",
                "{\"a\":}",
                "{\"a\":1,}",
                "{\"a\" 1}",
        };
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                g_autoptr(GPtrArray) out = NULL;

                g_assert_cmpint(split(bad[i], strlen(bad[i]), 1, &out, &empty, &message), ==, -EBADMSG);
                g_assert_nonnull(message);
                g_clear_pointer(&message, g_free);
        }

        /* Deep nesting never reaches the JSON parser. */
        deep = g_strnfill(100000, '[');
        deep[0] = '{';
        {
                g_autoptr(GPtrArray) out = NULL;

                g_assert_cmpint(split(deep, strlen(deep), 4096, &out, &empty, &message), ==, -EBADMSG);
                g_assert_nonnull(strstr(message, "deeper"));
                g_clear_pointer(&message, g_free);
        }
}

static void test_client_endpoints(void) {
        static const char *const bad[] = {
                "",
                "127.0.0.1:2379",
                "localhost:2379",
                "ftp://127.0.0.1:2379",
                "unix:///run/etcd.sock",
                "http://",
                "http:///x",
                "http://127.0.0.1:2379/v3",
                "http://127.0.0.1:2379?x=1",
                "http://127.0.0.1:2379#x",
                "http://user:pw@127.0.0.1:2379",
                "http://127.0.0.1 :2379",
                "http://127.0.0.1:99999",
        };
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        EtcdClient *c = NULL;

        g_assert_cmpint(sd_event_new(&e), >=, 0);

        g_assert_cmpint(etcd_client_new(e, (char *[]) { NULL }, 0, &c), ==, -EINVAL);
        g_assert_cmpint(etcd_client_new(e, NULL, 0, &c), ==, -EINVAL);
        for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
                char *list[] = { (char *) "http://127.0.0.1:2379", (char *) bad[i], NULL };

                if (etcd_client_new(e, list, 0, &c) != -EINVAL)
                        g_error("endpoint '%s' accepted", bad[i]);
                g_assert_null(c);
        }

        g_assert_cmpint(etcd_client_new(e, (char *[]) { (char *) "http://127.0.0.1:2379/",
                                                        (char *) "https://[::1]:2379",
                                                        (char *) "http://etcd.example:80", NULL }, 0, &c), ==, 0);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, "http://127.0.0.1:2379");
        c = etcd_client_free(c);
        g_assert_null(c);
        g_assert_null(etcd_client_free(NULL));

        /* Requests the API refuses before anything is sent. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { (char *) "http://127.0.0.1:2379", NULL }, 0, &c), ==, 0);
        g_assert_cmpint(etcd_lease_grant(c, 0, (EtcdLeaseGrantCallback) abort, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(etcd_put(c, "", 0, "v", 1, 0, (EtcdRevisionCallback) abort, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(etcd_range(c, "", 0, NULL, (EtcdRangeCallback) abort, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(etcd_call(c, "v3/kv/range", NULL, (EtcdCallback) abort, NULL, NULL), ==, -EINVAL);
        g_assert_cmpint(etcd_watch(c, "k", 1, NULL, &(EtcdWatchCallbacks) {}, NULL, &(EtcdWatch *) { NULL }), ==,
                        -EINVAL);
        etcd_client_free(c);
}

/* ---- a fake HTTP server on the test's loop ----------------------------------- */

typedef struct FakeServer FakeServer;

typedef struct FakeConn {
        FakeServer *server;
        int fd;
        sd_event_source *source;
        GString *in;
} FakeConn;

struct FakeServer {
        sd_event *event;
        int fd;
        sd_event_source *source;
        char *url;
        char *response;                 /* sent whole for each request; NULL: never answer */
        bool keep_open;                 /* a stream: leave the connection open after it */
        unsigned n_requests;
        unsigned n_closed;              /* connections the client closed */
        GPtrArray *conns;
};

static void fake_conn_free(FakeConn *conn) {
        sd_event_source_disable_unref(conn->source);
        close(conn->fd);
        g_string_free(conn->in, true);
        g_free(conn);
}

static bool request_complete(GString *in) {
        const char *end = strstr(in->str, "\r\n\r\n");
        const char *cl;
        size_t length = 0;

        if (!end)
                return false;
        cl = strcasestr(in->str, "\r\nContent-Length:");
        if (cl && cl < end)
                length = strtoul(cl + strlen("\r\nContent-Length:"), NULL, 10);
        return in->len >= (size_t) (end + 4 - in->str) + length;
}

static void write_all(int fd, const char *data, size_t size) {
        int flags = fcntl(fd, F_GETFL);

        /* Blocking for the write: the client reads on this very loop, but
         * the socket buffer holds every response of these tests. */
        g_assert_cmpint(fcntl(fd, F_SETFL, flags & ~O_NONBLOCK), ==, 0);
        while (size > 0) {
                ssize_t k = write(fd, data, size);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return; /* the client went away */
                data += k;
                size -= (size_t) k;
        }
        g_assert_cmpint(fcntl(fd, F_SETFL, flags), ==, 0);
}

static int on_fake_conn(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        FakeConn *conn = userdata;
        FakeServer *server = conn->server;
        char buf[4096];
        ssize_t k;

        k = read(fd, buf, sizeof buf);
        if (k < 0 && IN_SET(errno, EAGAIN, EINTR))
                return 0;
        if (k <= 0) {
                server->n_closed++;
                g_ptr_array_remove(server->conns, conn);
                return 0;
        }

        g_string_append_len(conn->in, buf, k);
        if (!request_complete(conn->in))
                return 0;

        server->n_requests++;
        g_string_truncate(conn->in, 0);
        if (!server->response)
                return 0;

        write_all(fd, server->response, strlen(server->response));
        if (!server->keep_open)
                /* Connection: close; the client closes its end then. */
                (void) shutdown(fd, SHUT_WR);
        return 0;
}

static int on_fake_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        FakeServer *server = userdata;
        FakeConn *conn;
        int cfd;

        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
                return 0;

        conn = g_new0(FakeConn, 1);
        conn->server = server;
        conn->fd = cfd;
        conn->in = g_string_new(NULL);
        g_assert_cmpint(sd_event_add_io(server->event, &conn->source, cfd, EPOLLIN, on_fake_conn, conn), >=, 0);
        g_ptr_array_add(server->conns, conn);
        return 0;
}

static FakeServer *fake_server_new(sd_event *e, const char *response) {
        FakeServer *server = g_new0(FakeServer, 1);
        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        socklen_t len = sizeof sa;

        server->event = e;
        server->response = g_strdup(response);
        server->conns = g_ptr_array_new_with_free_func((GDestroyNotify) fake_conn_free);
        server->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        g_assert_cmpint(server->fd, >=, 0);
        g_assert_cmpint(bind(server->fd, (struct sockaddr *) &sa, sizeof sa), ==, 0);
        g_assert_cmpint(getsockname(server->fd, (struct sockaddr *) &sa, &len), ==, 0);
        g_assert_cmpint(listen(server->fd, 64), ==, 0);
        g_assert_cmpint(sd_event_add_io(e, &server->source, server->fd, EPOLLIN, on_fake_accept, server), >=, 0);
        server->url = g_strdup_printf("http://127.0.0.1:%u", ntohs(sa.sin_port));
        return server;
}

static void fake_server_free(FakeServer *server) {
        if (!server)
                return;
        g_ptr_array_unref(server->conns);
        sd_event_source_disable_unref(server->source);
        close(server->fd);
        g_free(server->url);
        g_free(server->response);
        g_free(server);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FakeServer, fake_server_free)

static char *http_reply(const char *status, const char *body) {
        return g_strdup_printf("HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                               "Connection: close\r\n\r\n%s", status, strlen(body), body);
}

/* A chunked 200 as the gateway streams, cut every `step` bytes; with the
 * final chunk if `end`. */
static char *http_stream(const char *body, size_t step, bool end) {
        GString *s = g_string_new("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n");
        size_t n = strlen(body);

        for (size_t i = 0; i < n; i += step) {
                size_t k = MIN(step, n - i);

                g_string_append_printf(s, "%zx\r\n", k);
                g_string_append_len(s, body + i, (gssize) k);
                g_string_append(s, "\r\n");
        }
        if (end)
                g_string_append(s, "0\r\n\r\n");
        return g_string_free(s, false);
}

static const char range_reply[] =
        "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"2\","
        "\"mod_revision\":\"3\",\"version\":\"2\",\"value\":\"dg==\"}],\"count\":\"1\"}";

typedef struct Outcome {
        bool done;
        unsigned n_calls;
        int error;
        char *message;
        int64_t revision;
        size_t n_kvs;
} Outcome;

static void outcome_clear(Outcome *o) {
        g_free(o->message);
        *o = (Outcome) {};
}

static void on_range(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                     void *userdata) {
        Outcome *o = userdata;

        o->n_calls++;
        o->done = true;
        o->error = error;
        g_free(o->message);
        o->message = g_strdup(error_message);
        if (error == 0) {
                g_assert_nonnull(result);
                o->revision = result->revision;
                o->n_kvs = result->n_kvs;
        } else {
                g_assert_nonnull(error_message);
                g_assert_null(result);
        }
}

static void on_never(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                     void *userdata) {
        g_error("callback of a cancelled call: %d %s", error, strempty(error_message));
}

static void range_once(sd_event *e, EtcdClient *c, Outcome *o) {
        outcome_clear(o);
        g_assert_cmpint(etcd_range(c, "k", 1, NULL, on_range, o, NULL), ==, 0);
        /* Never from inside the call that started it. */
        g_assert_false(o->done);
        test_run_until(e, &o->done, 20 * SEC);
        g_assert_cmpuint(o->n_calls, ==, 1);
}

static void test_fake_malformed(void) {
        static const struct {
                const char *status;
                const char *body;
                int error;
                const char *message;
        } cases[] = {
                { "200 OK", "not json", -EBADMSG, "unexpected byte" },
                { "200 OK", "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"***\"}]}", -EBADMSG, "base64" },
                { "200 OK", "{\"header\":{\"revision\":\"three\"}}", -EBADMSG, "revision" },
                { "200 OK", "{\"kvs\":[]}", -EBADMSG, "no header" },
                { "200 OK", "{\"header\":{\"revision\":\"3\"},\"kvs\":[{\"key\":\"aw==\"}", -EBADMSG, "ends inside" },
                { "404 Not Found", "404 page not found", -EBADMSG, "unexpected HTTP status 404" },
                { "400 Bad Request", "{\"error\":\"illegal base64\",\"message\":\"illegal base64\",\"code\":3}",
                  -EINVAL, "illegal base64" },
                { "404 Not Found", "{\"error\":\"etcdserver: requested lease not found\",\"code\":5}", -ENOENT,
                  "lease not found" },
                { "200 OK", range_reply, 0, NULL },
        };
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
                g_autofree char *response = http_reply(cases[i].status, cases[i].body);
                g_autoptr(FakeServer) server = fake_server_new(e, response);
                _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
                Outcome o = {};

                g_assert_cmpint(etcd_client_new(e, (char *[]) { server->url, NULL }, 5 * SEC, &c), ==, 0);
                range_once(e, c, &o);
                if (o.error != cases[i].error)
                        g_error("case %zu: %d (%s), expected %d", i, o.error, strempty(o.message), cases[i].error);
                if (cases[i].message && !strstr(o.message, cases[i].message))
                        g_error("case %zu: message '%s' lacks '%s'", i, o.message, cases[i].message);
                if (o.error == 0) {
                        g_assert_cmpint(o.revision, ==, 3);
                        g_assert_cmpuint(o.n_kvs, ==, 1);
                }
                /* An etcd answer, even a bad one, is no reason to fail over. */
                g_assert_cmpuint(server->n_requests, ==, 1);
                outcome_clear(&o);
        }
}

static void test_fake_unavailable_failover(void) {
        g_autofree char *unavailable = http_reply("503 Service Unavailable",
                                                  "{\"error\":\"etcdserver: no leader\",\"message\":\"etcdserver: "
                                                  "no leader\",\"code\":14}");
        g_autofree char *good = http_reply("200 OK", range_reply);
        g_autofree char *dead = test_dead_endpoint();
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        g_autoptr(FakeServer) a = NULL, b = NULL;
        Outcome o = {};

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        a = fake_server_new(e, unavailable);
        b = fake_server_new(e, good);

        /* Refused, then UNAVAILABLE, then an answer. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { dead, a->url, b->url, NULL }, 5 * SEC, &c), ==, 0);
        range_once(e, c, &o);
        g_assert_cmpint(o.error, ==, 0);
        g_assert_cmpuint(a->n_requests, ==, 1);
        g_assert_cmpuint(b->n_requests, ==, 1);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, b->url);

        /* The next call starts where the last one was answered. */
        range_once(e, c, &o);
        g_assert_cmpint(o.error, ==, 0);
        g_assert_cmpuint(a->n_requests, ==, 1);
        g_assert_cmpuint(b->n_requests, ==, 2);

        /* Now b is unavailable too: b, dead, a all fail; the reasons differ. */
        g_free(b->response);
        b->response = g_strdup(unavailable);
        range_once(e, c, &o);
        g_assert_cmpint(o.error, ==, -EHOSTUNREACH);
        g_assert_nonnull(strstr(o.message, "/v3/kv/range"));
        g_assert_nonnull(strstr(o.message, a->url));
        g_assert_nonnull(strstr(o.message, b->url));
        g_assert_nonnull(strstr(o.message, dead));
        g_assert_nonnull(strstr(o.message, "no leader"));
        g_assert_cmpuint(a->n_requests, ==, 2);
        g_assert_cmpuint(b->n_requests, ==, 3);
        outcome_clear(&o);
}

static void test_fake_all_refused(void) {
        g_autofree char *d1 = test_dead_endpoint(), *d2 = test_dead_endpoint();
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        Outcome o = {};

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        g_assert_cmpint(etcd_client_new(e, (char *[]) { d1, d2, NULL }, 5 * SEC, &c), ==, 0);
        range_once(e, c, &o);
        g_assert_cmpint(o.error, ==, -ECONNREFUSED);
        g_assert_nonnull(strstr(o.message, d1));
        g_assert_nonnull(strstr(o.message, d2));
        outcome_clear(&o);
}

static void test_fake_timeout(void) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        g_autoptr(FakeServer) a = NULL, b = NULL;
        Outcome o = {};
        uint64_t start, elapsed;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        /* Both accept and read, and never answer. */
        a = fake_server_new(e, NULL);
        b = fake_server_new(e, NULL);
        g_assert_cmpint(etcd_client_new(e, (char *[]) { a->url, b->url, NULL }, 600 * 1000, &c), ==, 0);

        start = test_now_usec();
        range_once(e, c, &o);
        elapsed = test_now_usec() - start;
        g_test_message("timeout after %" G_GUINT64_FORMAT " ms: %s", elapsed / 1000, o.message);
        g_assert_cmpint(o.error, ==, -ETIMEDOUT);
        /* Each got its share of the 600 ms; the call took no longer. */
        g_assert_cmpuint(a->n_requests, ==, 1);
        g_assert_cmpuint(b->n_requests, ==, 1);
        g_assert_cmpuint(elapsed, >=, 500 * 1000);
        g_assert_cmpuint(elapsed, <, 600 * 1000 + 2 * SEC);
        g_assert_nonnull(strstr(o.message, a->url));
        g_assert_nonnull(strstr(o.message, b->url));
        outcome_clear(&o);
}

static void test_fake_cancel_in_flight(void) {
        g_autofree char *good = http_reply("200 OK", range_reply);
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL, *c2 = NULL;
        g_autoptr(FakeServer) hang = NULL, answer = NULL;
        EtcdCall *call = NULL, *early = NULL;
        bool sent = false, closed = false;
        Outcome o = {};

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        hang = fake_server_new(e, NULL);
        answer = fake_server_new(e, good);
        g_assert_cmpint(etcd_client_new(e, (char *[]) { hang->url, NULL }, 30 * SEC, &c), ==, 0);

        /* Cancelled before the loop ever ran. */
        g_assert_cmpint(etcd_range(c, "k", 1, NULL, on_never, NULL, &early), ==, 0);
        etcd_call_cancel(early);

        /* Cancelled while the server holds the request. */
        g_assert_cmpint(etcd_range(c, "k", 1, NULL, on_never, NULL, &call), ==, 0);
        while (hang->n_requests < 1)
                g_assert_cmpint(sd_event_run(e, 10 * SEC), >, 0);
        sent = true;
        etcd_call_cancel(call);

        /* Its connection goes: the server sees it closed. */
        while (hang->n_closed < 1)
                g_assert_cmpint(sd_event_run(e, 10 * SEC), >, 0);
        closed = true;
        g_assert_true(sent && closed);

        /* The loop serves other calls, and the cancelled ones stay quiet. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { answer->url, NULL }, 5 * SEC, &c2), ==, 0);
        range_once(e, c2, &o);
        g_assert_cmpint(o.error, ==, 0);
        outcome_clear(&o);
}

typedef struct FreeFromCallback {
        EtcdClient *client;
        unsigned n_calls;
        bool done;
} FreeFromCallback;

/* Whichever call is answered first frees the client: the others never call. */
static void on_range_free_client(EtcdCall *call, int error, const char *error_message, const EtcdRangeResult *result,
                                 void *userdata) {
        FreeFromCallback *f = userdata;

        g_assert_cmpint(error, ==, 0);
        g_assert_cmpuint(++f->n_calls, ==, 1);
        f->client = etcd_client_free(f->client);
        f->done = true;
}

static void on_watch_never_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        g_error("event on a freed client's watch");
}

static void on_watch_never_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        g_error("error on a freed client's watch: %s", error_message);
}

static void test_fake_free_in_flight(void) {
        static const EtcdWatchCallbacks never = {
                .event = on_watch_never_event,
                .error = on_watch_never_error,
        };
        g_autofree char *good = http_reply("200 OK", range_reply);
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        g_autoptr(FakeServer) hang = NULL, answer = NULL;
        FreeFromCallback f = {};
        EtcdClient *c = NULL;
        EtcdWatch *w;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        hang = fake_server_new(e, NULL);
        answer = fake_server_new(e, good);

        /* Freed from outside, with calls and a watch in flight. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { hang->url, NULL }, 30 * SEC, &c), ==, 0);
        for (unsigned i = 0; i < 5; i++)
                g_assert_cmpint(etcd_range(c, "k", 1, NULL, on_never, NULL, NULL), ==, 0);
        g_assert_cmpint(etcd_watch(c, "k", 1, NULL, &never, NULL, &w), ==, 0);
        while (hang->n_requests < 6)
                g_assert_cmpint(sd_event_run(e, 10 * SEC), >, 0);
        c = etcd_client_free(c);
        while (hang->n_closed < 6)
                g_assert_cmpint(sd_event_run(e, 10 * SEC), >, 0);

        /* Freed from the callback of one call while others are in flight:
         * two clients, one answering, one hanging; the answering one's
         * callback frees the hanging one, then its own. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { answer->url, NULL }, 30 * SEC, &f.client), ==, 0);
        for (unsigned i = 0; i < 3; i++)
                g_assert_cmpint(etcd_range(f.client, "k", 1, NULL, on_range_free_client, &f, NULL), ==, 0);
        g_assert_cmpint(etcd_watch(f.client, "k", 1, NULL, &never, NULL, &w), ==, 0);
        test_run_until(e, &f.done, 10 * SEC);
        g_assert_null(f.client);
        g_assert_cmpuint(f.n_calls, ==, 1);
}

typedef struct WatchLog {
        GString *log;
        bool ended;
        int error;
        char *message;
        unsigned n_errors;
        EtcdWatch *cancel_on_event;
} WatchLog;

static void on_log_created(EtcdWatch *w, int64_t revision, void *userdata) {
        WatchLog *l = userdata;

        g_string_append_printf(l->log, "created@%" PRIi64 " ", revision);
}

static void on_log_event(EtcdWatch *w, const EtcdEvent *event, void *userdata) {
        WatchLog *l = userdata;

        g_string_append_printf(l->log, "%s:%.*s@%" PRIi64 " ", event->type == ETCD_EVENT_PUT ? "PUT" : "DELETE",
                               (int) event->kv.key_size, event->kv.key, event->kv.mod_revision);
        if (l->cancel_on_event == w) {
                etcd_watch_cancel(w);
                l->ended = true;
        }
}

static void on_log_error(EtcdWatch *w, int error, const char *error_message, void *userdata) {
        WatchLog *l = userdata;

        /* No-op from here: the watch ends when this returns. */
        etcd_watch_cancel(w);
        l->n_errors++;
        l->ended = true;
        l->error = error;
        l->message = g_strdup(error_message);
}

static const EtcdWatchCallbacks log_callbacks = {
        .created = on_log_created,
        .event = on_log_event,
        .error = on_log_error,
};

static void watch_log_clear(WatchLog *l) {
        if (l->log)
                g_string_free(l->log, true);
        g_free(l->message);
        *l = (WatchLog) {};
}

static void test_fake_watch_stream(void) {
        static const char body[] =
                "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}\n"
                "{\"result\":{\"header\":{\"revision\":\"6\"},\"events\":[{\"kv\":{\"key\":\"YQ==\",\"mod_revision\":"
                "\"5\",\"value\":\"eA==\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"Yg==\",\"mod_revision\":\"6\"}}]}}\n"
                "{\"result\":{\"header\":{\"revision\":\"7\"},\"events\":[{\"kv\":{\"key\":\"Yw==\",\"mod_revision\":"
                "\"7\"}}]}}\n";
        static const char *const endings[] = {
                /* etcd going away: an error frame without newline, then the last chunk. */
                "{\"error\":{\"grpc_code\":1,\"http_code\":408,\"message\":\"grpc: the client connection is closing\","
                "\"http_status\":\"Request Timeout\"}}",
                /* The stream just ends. */
                "",
                /* Compaction. */
                "{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"9\"}}\n",
                /* Garbage. */
                "{\"result\":{\"events\":[{\"kv\":{\"key\":\"!\"}}]}}\n",
                "]\n",
        };
        static const int errors[] = { -ECONNRESET, -ECONNRESET, -ERANGE, -EBADMSG, -EBADMSG };
        static const char *const messages[] = { "connection is closing", "ended", "compacted", "base64", "0x5d" };
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        for (size_t i = 0; i < G_N_ELEMENTS(endings); i++)
                for (size_t step = 5; step <= 200; step += 65) {
                        g_autofree char *all = g_strconcat(body, endings[i], NULL);
                        g_autofree char *response = http_stream(all, step, true);
                        g_autoptr(FakeServer) server = fake_server_new(e, response);
                        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
                        WatchLog l = { .log = g_string_new(NULL) };
                        EtcdWatch *w;

                        server->keep_open = true;
                        g_assert_cmpint(etcd_client_new(e, (char *[]) { server->url, NULL }, 5 * SEC, &c), ==, 0);
                        g_assert_cmpint(etcd_watch(c, "a", 1,
                                                   &(EtcdWatchOptions) { .prefix = true, .start_revision = 5 },
                                                   &log_callbacks, &l, &w), ==, 0);
                        test_run_until(e, &l.ended, 10 * SEC);

                        g_assert_cmpstr(l.log->str, ==, "created@4 PUT:a@5 DELETE:b@6 PUT:c@7 ");
                        g_assert_cmpuint(l.n_errors, ==, 1);
                        if (l.error != errors[i] || !strstr(l.message, messages[i]))
                                g_error("ending %zu: %d (%s)", i, l.error, l.message);
                        watch_log_clear(&l);
                }
}

static void test_fake_watch_failover_and_cancel(void) {
        static const char body[] =
                "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}\n"
                "{\"result\":{\"header\":{\"revision\":\"6\"},\"events\":[{\"kv\":{\"key\":\"YQ==\",\"mod_revision\":"
                "\"5\"}},{\"kv\":{\"key\":\"Yg==\",\"mod_revision\":\"6\"}}]}}\n";
        g_autofree char *unavailable = http_reply("503 Service Unavailable", "{\"error\":\"no leader\",\"code\":14}");
        g_autofree char *stream = http_stream(body, 11, false);
        g_autofree char *dead = test_dead_endpoint();
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        g_autoptr(FakeServer) a = NULL, b = NULL;
        WatchLog l = { .log = g_string_new(NULL) };
        EtcdWatch *w;

        g_assert_cmpint(sd_event_new(&e), >=, 0);
        a = fake_server_new(e, unavailable);
        b = fake_server_new(e, stream);
        b->keep_open = true;

        /* Not created on a dead and an unavailable member: fails over. A
         * watch cancelled from its first event hears no more. */
        g_assert_cmpint(etcd_client_new(e, (char *[]) { dead, a->url, b->url, NULL }, 5 * SEC, &c), ==, 0);
        g_assert_cmpint(etcd_watch(c, "k", 1, NULL, &log_callbacks, &l, &w), ==, 0);
        l.cancel_on_event = w;
        test_run_until(e, &l.ended, 10 * SEC);
        g_assert_cmpstr(l.log->str, ==, "created@4 PUT:a@5 ");
        g_assert_cmpuint(l.n_errors, ==, 0);
        g_assert_cmpstr(etcd_client_get_endpoint(c), ==, b->url);
        /* Its stream is closed: the server sees it. */
        while (b->n_closed < 1)
                g_assert_cmpint(sd_event_run(e, 10 * SEC), >, 0);
        g_assert_cmpstr(l.log->str, ==, "created@4 PUT:a@5 ");
        watch_log_clear(&l);

        /* Every endpoint fails before "created": one error naming them. */
        l.log = g_string_new(NULL);
        b->response = (g_free(b->response), g_strdup(unavailable));
        b->keep_open = false;
        g_assert_cmpint(etcd_watch(c, "k", 1, NULL, &log_callbacks, &l, &w), ==, 0);
        test_run_until(e, &l.ended, 10 * SEC);
        g_assert_cmpstr(l.log->str, ==, "");
        g_assert_cmpint(l.error, ==, -EHOSTUNREACH);
        g_assert_nonnull(strstr(l.message, dead));
        g_assert_nonnull(strstr(l.message, a->url));
        g_assert_nonnull(strstr(l.message, b->url));
        watch_log_clear(&l);

        /* A member that never confirms the watch: timeout. */
        l.log = g_string_new(NULL);
        {
                g_autoptr(FakeServer) hang = fake_server_new(e, NULL);
                _cleanup_(etcd_client_freep) EtcdClient *c2 = NULL;
                uint64_t start = test_now_usec();

                g_assert_cmpint(etcd_client_new(e, (char *[]) { hang->url, NULL }, 300 * 1000, &c2), ==, 0);
                g_assert_cmpint(etcd_watch(c2, "k", 1, NULL, &log_callbacks, &l, &w), ==, 0);
                test_run_until(e, &l.ended, 10 * SEC);
                g_assert_cmpint(l.error, ==, -ETIMEDOUT);
                g_assert_cmpuint(test_now_usec() - start, <, 300 * 1000 + 2 * SEC);
        }
        watch_log_clear(&l);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/etcd/parse/int64", test_parse_int64);
        g_test_add_func("/etcd/parse/reply", test_parse_reply);
        g_test_add_func("/etcd/parse/range", test_parse_range);
        g_test_add_func("/etcd/parse/txn", test_parse_txn);
        g_test_add_func("/etcd/parse/watch-message", test_parse_watch_message);
        g_test_add_func("/etcd/parse/stream-splitter", test_parse_splitter);
        g_test_add_func("/etcd/client/endpoints", test_client_endpoints);
        g_test_add_func("/etcd/fake/malformed-replies", test_fake_malformed);
        g_test_add_func("/etcd/fake/unavailable-fails-over", test_fake_unavailable_failover);
        g_test_add_func("/etcd/fake/all-refused", test_fake_all_refused);
        g_test_add_func("/etcd/fake/timeout-names-endpoints", test_fake_timeout);
        g_test_add_func("/etcd/fake/cancel-in-flight", test_fake_cancel_in_flight);
        g_test_add_func("/etcd/fake/free-in-flight", test_fake_free_in_flight);
        g_test_add_func("/etcd/fake/watch-stream", test_fake_watch_stream);
        g_test_add_func("/etcd/fake/watch-failover-and-cancel", test_fake_watch_failover_and_cancel);

        return g_test_run();
}
