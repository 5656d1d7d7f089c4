/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>

#include <curl/curl.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <systemd/sd-event.h>

#include "etcd.h"
#include "macro.h"

#define REPLY_MAX (64U * 1024U * 1024U)
/* etcd's messages nest six levels deep; anything much deeper is not etcd. */
#define JSON_DEPTH_MAX 64U
#define USEC_PER_MSEC UINT64_C(1000)

/* gRPC status codes. */
enum {
        GRPC_OK = 0,
        GRPC_CANCELLED = 1,
        GRPC_UNKNOWN = 2,
        GRPC_INVALID_ARGUMENT = 3,
        GRPC_DEADLINE_EXCEEDED = 4,
        GRPC_NOT_FOUND = 5,
        GRPC_ALREADY_EXISTS = 6,
        GRPC_PERMISSION_DENIED = 7,
        GRPC_RESOURCE_EXHAUSTED = 8,
        GRPC_FAILED_PRECONDITION = 9,
        GRPC_ABORTED = 10,
        GRPC_OUT_OF_RANGE = 11,
        GRPC_UNIMPLEMENTED = 12,
        GRPC_INTERNAL = 13,
        GRPC_UNAVAILABLE = 14,
        GRPC_DATA_LOSS = 15,
        GRPC_UNAUTHENTICATED = 16,
};

typedef enum TransferKind {
        TRANSFER_CALL,
        TRANSFER_WATCH,
} TransferKind;

/* What calls and watches share: one POST, tried on the endpoints in turn. */
typedef struct Transfer {
        TransferKind kind;
        EtcdClient *client;             /* NULL once detached */
        GList *link;                    /* in the client's calls or watches */
        char *path;
        char *body;
        CURL *easy;
        struct curl_slist *headers;
        char errbuf[CURL_ERROR_SIZE];
        GByteArray *response;           /* a unary reply, or a watch's error reply */
        int write_error;                /* why a write callback refused data */
        bool attached;                  /* in the multi handle */
        size_t first_endpoint;
        size_t n_tried;
        size_t endpoint;                /* of the running attempt */
        uint64_t deadline;              /* CLOCK_MONOTONIC µs */
        GString *failures;              /* "endpoint: reason" of failed attempts */
        int failure_error;              /* their errno if they all agree */
        bool failures_disagree;
        bool is_auth;                   /* the authentication itself: sends no token */
        GList *auth_link;               /* in the client's auth_waiting, NULL if not */
        unsigned token_generation;      /* of the token the running attempt sent */
        bool reauthenticated;           /* retried once after etcd refused its token */
} Transfer;

typedef enum CallKind {
        CALL_GENERIC,
        CALL_LEASE_GRANT,
        CALL_LEASE_KEEPALIVE,
        CALL_REVISION,
        CALL_DELETE,
        CALL_RANGE,
        CALL_TXN,
} CallKind;

/* The member that matches the call's kind is set. */
typedef union CallCallback {
        EtcdCallback generic;
        EtcdLeaseGrantCallback lease_grant;
        EtcdLeaseKeepAliveCallback lease_keepalive;
        EtcdRevisionCallback revision;
        EtcdDeleteCallback delete;
        EtcdRangeCallback range;
        EtcdTxnCallback txn;
} CallCallback;

struct EtcdCall {
        Transfer transfer;              /* first: a Transfer * is an EtcdCall * */
        CallKind kind;
        CallCallback callback;
        void *userdata;
        int64_t lease_id;               /* keepalive: for the message */
        bool in_callback;

        /* The outcome, once finished. */
        int error;
        char *error_message;
        JsonNode *reply;
};

struct EtcdWatch {
        Transfer transfer;              /* first: a Transfer * is an EtcdWatch * */
        EtcdWatchCallbacks callbacks;
        void *userdata;
        EtcdJsonSplitter *splitter;
        sd_event_source *create_timer;  /* etcd must confirm the watch in time */
        bool created;
        bool finished;                  /* its error is queued: nothing more */
        bool in_error_callback;
        bool token_refused;             /* etcd refused its token: retry once it is done */
};

typedef enum PendingKind {
        PENDING_CALL_DONE,
        PENDING_WATCH_CREATED,
        PENDING_WATCH_EVENT,
        PENDING_WATCH_ERROR,
} PendingKind;

/* A callback to run from the dispatch source, one per loop iteration. */
typedef struct Pending {
        PendingKind kind;
        EtcdCall *call;
        EtcdWatch *watch;
        EtcdEvent *event;
        int64_t revision;
        int error;
        char *message;
} Pending;

struct EtcdClient {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;         /* libcurl's timeout */
        sd_event_source *dispatch;      /* runs the pending callbacks */
        GHashTable *sockets;            /* fd → sd_event_source * */
        char **endpoints;
        size_t n_endpoints;
        size_t preferred;               /* the endpoint that answered last */
        uint64_t call_timeout_usec;
        char *ca_file;                  /* TLS (EtcdTlsOptions), NULL: unset */
        char *cert_file;
        char *key_file;
        char *user;                     /* authentication (etcd_client_set_auth), NULL: none */
        char *password;
        char *token;                    /* NULL: none (yet, or etcd's authentication is off) */
        bool authenticated;             /* token is etcd's latest answer: calls may start */
        unsigned token_generation;      /* counts the tokens, to tell a stale one */
        unsigned n_authentications;
        EtcdCall *auth_call;            /* the one authentication in flight, NULL if none */
        GQueue auth_waiting;            /* Transfer *: waiting for auth_call */
        GQueue calls;                   /* EtcdCall *: running or waiting for dispatch */
        GQueue watches;                 /* EtcdWatch * */
        GQueue pending;                 /* Pending * */
};

struct EtcdTxn {
        JsonArray *compare;
        JsonArray *success;
        JsonArray *failure;
};

typedef struct EventBox {
        EtcdEvent event;                /* first: an EtcdEvent * is an EventBox * */
        EtcdKeyValue prev;
} EventBox;

struct EtcdJsonSplitter {
        GByteArray *partial;            /* the bytes of an unfinished object */
        unsigned depth;
        bool in_string;
        bool escape;
};

static _printf_(2, 3) int bad_message(char **ret_message, const char *format, ...) {
        va_list ap;

        if (ret_message) {
                va_start(ap, format);
                *ret_message = g_strdup_vprintf(format, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000) + (uint64_t) ts.tv_nsec / UINT64_C(1000);
}

/* Overwrites a secret before it is freed. */
static void erase_free(char *s) {
        if (s)
                explicit_bzero(s, strlen(s));
        g_free(s);
}

/* A printable excerpt of a reply for error messages. */
static char *excerpt(const void *data, size_t size) {
        const unsigned char *p = data;
        size_t n = MIN(size, (size_t) 200);
        GString *s = g_string_sized_new(n + 4);

        for (size_t i = 0; i < n; i++)
                g_string_append_c(s, p[i] >= 0x20 && p[i] < 0x7f ? (char) p[i] : ' ');
        g_strstrip(s->str);
        s->len = strlen(s->str);
        if (size > n)
                g_string_append(s, "…");
        return g_string_free(s, false);
}

int etcd_grpc_code_to_errno(int64_t code) {
        switch (code) {
        case GRPC_CANCELLED:
                return -ECANCELED;
        case GRPC_INVALID_ARGUMENT:
                return -EINVAL;
        case GRPC_DEADLINE_EXCEEDED:
                return -ETIME;
        case GRPC_NOT_FOUND:
                return -ENOENT;
        case GRPC_ALREADY_EXISTS:
                return -EEXIST;
        case GRPC_PERMISSION_DENIED:
        case GRPC_UNAUTHENTICATED:
                return -EACCES;
        case GRPC_RESOURCE_EXHAUSTED:
                return -ENOSPC;
        case GRPC_FAILED_PRECONDITION:
                return -ESTALE;
        case GRPC_ABORTED:
                return -EAGAIN;
        case GRPC_OUT_OF_RANGE:
                return -ERANGE;
        case GRPC_UNIMPLEMENTED:
                return -EOPNOTSUPP;
        case GRPC_UNAVAILABLE:
                return -EHOSTUNREACH;
        default: /* UNKNOWN, INTERNAL, DATA_LOSS, and codes gRPC may add */
                return -EIO;
        }
}

/* ---- JSON values ---------------------------------------------------------- */

static int parse_int64_string(const char *s, int64_t *ret) {
        const char *p = s;
        char *end;
        long long v;

        if (*p == '-')
                p++;
        if (*p == '\0' || strlen(p) > 19)
                return -EBADMSG;
        for (const char *q = p; *q; q++)
                if (!g_ascii_isdigit(*q))
                        return -EBADMSG;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || *end != '\0')
                return -EBADMSG;
        *ret = (int64_t) v;
        return 0;
}

static int parse_int64_node(JsonNode *n, int64_t *ret) {
        if (JSON_NODE_HOLDS_NULL(n)) {
                *ret = 0;
                return 0;
        }
        if (!JSON_NODE_HOLDS_VALUE(n))
                return -EBADMSG;

        switch (json_node_get_value_type(n)) {
        case G_TYPE_STRING:
                return parse_int64_string(json_node_get_string(n), ret);
        case G_TYPE_INT64:
                *ret = json_node_get_int(n);
                return 0;
        default:
                return -EBADMSG;
        }
}

int etcd_parse_int64(JsonObject *o, const char *member, int64_t *ret) {
        JsonNode *n = json_object_get_member(o, member);

        if (!n) {
                /* proto3's JSON leaves out zero values. */
                *ret = 0;
                return 0;
        }
        return parse_int64_node(n, ret);
}

static int get_int64(JsonObject *o, const char *member, int64_t *ret, char **ret_message) {
        if (etcd_parse_int64(o, member, ret) < 0)
                return bad_message(ret_message, "'%s' is not an int64", member);
        return 0;
}

static int get_bool(JsonObject *o, const char *member, bool *ret, char **ret_message) {
        JsonNode *n = json_object_get_member(o, member);

        if (!n || JSON_NODE_HOLDS_NULL(n)) {
                *ret = false;
                return 0;
        }
        if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
                return bad_message(ret_message, "'%s' is not a boolean", member);
        *ret = json_node_get_boolean(n);
        return 0;
}

/* The member's string, NULL if absent or null; -EBADMSG if not a string. */
static int get_string(JsonObject *o, const char *member, const char **ret, char **ret_message) {
        JsonNode *n = json_object_get_member(o, member);

        if (!n || JSON_NODE_HOLDS_NULL(n)) {
                *ret = NULL;
                return 0;
        }
        if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING)
                return bad_message(ret_message, "'%s' is not a string", member);
        *ret = json_node_get_string(n);
        return 0;
}

/* The member's object, NULL if absent or null; -EBADMSG if not an object. */
static int get_object(JsonObject *o, const char *member, JsonObject **ret, char **ret_message) {
        JsonNode *n = json_object_get_member(o, member);

        if (!n || JSON_NODE_HOLDS_NULL(n)) {
                *ret = NULL;
                return 0;
        }
        if (!JSON_NODE_HOLDS_OBJECT(n))
                return bad_message(ret_message, "'%s' is not an object", member);
        *ret = json_node_get_object(n);
        return 0;
}

static int get_array(JsonObject *o, const char *member, JsonArray **ret, char **ret_message) {
        JsonNode *n = json_object_get_member(o, member);

        if (!n || JSON_NODE_HOLDS_NULL(n)) {
                *ret = NULL;
                return 0;
        }
        if (!JSON_NODE_HOLDS_ARRAY(n))
                return bad_message(ret_message, "'%s' is not an array", member);
        *ret = json_node_get_array(n);
        return 0;
}

/* Standard base64 with padding, as Go's encoding/json writes []byte. */
static bool is_base64(const char *s) {
        size_t n = strlen(s), pad = 0;

        if (n % 4 != 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];

                if (ch == '=') {
                        if (i < n - 2)
                                return false;
                        pad++;
                } else if (pad > 0 || !(g_ascii_isalnum(ch) || ch == '+' || ch == '/'))
                        return false;
        }
        return true;
}

/* Bytes from a base64 member: absent means empty. NUL-terminated. */
static int get_bytes(JsonObject *o, const char *member, char **ret, size_t *ret_size, char **ret_message) {
        const char *s;
        guchar *decoded;
        gsize n = 0;
        char *buf;
        int r;

        r = get_string(o, member, &s, ret_message);
        if (r < 0)
                return r;
        if (s && !is_base64(s))
                return bad_message(ret_message, "'%s' is not base64", member);

        if (!s || *s == '\0') {
                *ret = g_malloc0(1);
                *ret_size = 0;
                return 0;
        }

        decoded = g_base64_decode(s, &n);
        buf = g_malloc(n + 1);
        memcpy(buf, decoded, n);
        buf[n] = '\0';
        g_free(decoded);

        *ret = buf;
        *ret_size = n;
        return 0;
}

static void key_value_clear(EtcdKeyValue *kv) {
        g_free(kv->key);
        g_free(kv->value);
        *kv = (EtcdKeyValue) {};
}

static int parse_key_value(JsonNode *n, EtcdKeyValue *ret, char **ret_message) {
        EtcdKeyValue kv = {};
        JsonObject *o;
        int r;

        if (!JSON_NODE_HOLDS_OBJECT(n))
                return bad_message(ret_message, "a kv is not an object");
        o = json_node_get_object(n);

        r = get_bytes(o, "key", &kv.key, &kv.key_size, ret_message);
        if (r >= 0)
                r = get_bytes(o, "value", &kv.value, &kv.value_size, ret_message);
        if (r >= 0)
                r = get_int64(o, "create_revision", &kv.create_revision, ret_message);
        if (r >= 0)
                r = get_int64(o, "mod_revision", &kv.mod_revision, ret_message);
        if (r >= 0)
                r = get_int64(o, "version", &kv.version, ret_message);
        if (r >= 0)
                r = get_int64(o, "lease", &kv.lease, ret_message);
        if (r < 0) {
                key_value_clear(&kv);
                return r;
        }

        *ret = kv;
        return 0;
}

static void key_values_free(EtcdKeyValue *kvs, size_t n) {
        for (size_t i = 0; i < n; i++)
                key_value_clear(&kvs[i]);
        g_free(kvs);
}

/* The "kvs" array of a range response. */
static int parse_key_values(JsonObject *o, EtcdKeyValue **ret, size_t *ret_n, char **ret_message) {
        JsonArray *a;
        EtcdKeyValue *kvs;
        size_t n;
        int r;

        r = get_array(o, "kvs", &a, ret_message);
        if (r < 0)
                return r;

        n = a ? json_array_get_length(a) : 0;
        kvs = g_new0(EtcdKeyValue, n + 1);
        for (size_t i = 0; i < n; i++) {
                r = parse_key_value(json_array_get_element(a, i), &kvs[i], ret_message);
                if (r < 0) {
                        key_values_free(kvs, i);
                        return r;
                }
        }

        *ret = kvs;
        *ret_n = n;
        return 0;
}

int etcd_parse_header_revision(JsonNode *reply, int64_t *ret, char **ret_message) {
        JsonObject *header;
        int r;

        if (!reply || !JSON_NODE_HOLDS_OBJECT(reply))
                return bad_message(ret_message, "reply is not a JSON object");
        r = get_object(json_node_get_object(reply), "header", &header, ret_message);
        if (r < 0)
                return r;
        if (!header)
                return bad_message(ret_message, "reply has no header");
        return get_int64(header, "revision", ret, ret_message);
}

EtcdRangeResult *etcd_range_result_free(EtcdRangeResult *r) {
        if (!r)
                return NULL;
        key_values_free(r->kvs, r->n_kvs);
        g_free(r);
        return NULL;
}

int etcd_parse_range_result(JsonNode *reply, EtcdRangeResult **ret, char **ret_message) {
        _cleanup_(etcd_range_result_freep) EtcdRangeResult *result = g_new0(EtcdRangeResult, 1);
        JsonObject *o;
        int r;

        r = etcd_parse_header_revision(reply, &result->revision, ret_message);
        if (r < 0)
                return r;
        o = json_node_get_object(reply);

        r = parse_key_values(o, &result->kvs, &result->n_kvs, ret_message);
        if (r < 0)
                return r;
        r = get_int64(o, "count", &result->count, ret_message);
        if (r < 0)
                return r;
        r = get_bool(o, "more", &result->more, ret_message);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(result);
        return 0;
}

EtcdTxnResult *etcd_txn_result_free(EtcdTxnResult *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n_responses; i++)
                key_values_free(r->responses[i].kvs, r->responses[i].n_kvs);
        g_free(r->responses);
        g_free(r);
        return NULL;
}

static int parse_op_result(JsonNode *n, EtcdOpResult *ret, char **ret_message) {
        JsonObject *o, *inner;
        int r;

        if (!JSON_NODE_HOLDS_OBJECT(n))
                return bad_message(ret_message, "a txn response is not an object");
        o = json_node_get_object(n);

        r = get_object(o, "response_range", &inner, ret_message);
        if (r < 0)
                return r;
        if (inner) {
                ret->type = ETCD_OP_RANGE;
                r = parse_key_values(inner, &ret->kvs, &ret->n_kvs, ret_message);
                if (r < 0)
                        return r;
                return get_int64(inner, "count", &ret->count, ret_message);
        }

        r = get_object(o, "response_put", &inner, ret_message);
        if (r < 0)
                return r;
        if (inner) {
                ret->type = ETCD_OP_PUT;
                ret->kvs = g_new0(EtcdKeyValue, 1);
                return 0;
        }

        r = get_object(o, "response_delete_range", &inner, ret_message);
        if (r < 0)
                return r;
        if (inner) {
                ret->type = ETCD_OP_DELETE;
                ret->kvs = g_new0(EtcdKeyValue, 1);
                return get_int64(inner, "deleted", &ret->count, ret_message);
        }

        return bad_message(ret_message, "a txn response of an unknown kind");
}

int etcd_parse_txn_result(JsonNode *reply, EtcdTxnResult **ret, char **ret_message) {
        _cleanup_(etcd_txn_result_freep) EtcdTxnResult *result = g_new0(EtcdTxnResult, 1);
        JsonObject *o;
        JsonArray *a;
        size_t n;
        int r;

        r = etcd_parse_header_revision(reply, &result->revision, ret_message);
        if (r < 0)
                return r;
        o = json_node_get_object(reply);

        r = get_bool(o, "succeeded", &result->succeeded, ret_message);
        if (r < 0)
                return r;
        r = get_array(o, "responses", &a, ret_message);
        if (r < 0)
                return r;

        n = a ? json_array_get_length(a) : 0;
        result->responses = g_new0(EtcdOpResult, n + 1);
        for (size_t i = 0; i < n; i++) {
                r = parse_op_result(json_array_get_element(a, i), &result->responses[i], ret_message);
                result->n_responses = i + 1; /* freed with the result, also half-parsed */
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(result);
        return 0;
}

/* ---- replies --------------------------------------------------------------- */

static int parse_json(const char *data, size_t size, JsonNode **ret, char **ret_message) {
        g_autoptr(JsonParser) parser = json_parser_new_immutable();
        g_autoptr(GError) error = NULL;
        JsonNode *root;

        if (memchr(data, '\0', size))
                return bad_message(ret_message, "reply contains a NUL byte");
        if (!json_parser_load_from_data(parser, data, (gssize) size, &error))
                return bad_message(ret_message, "reply is not JSON: %s", error->message);

        root = json_parser_steal_root(parser);
        if (!root)
                return bad_message(ret_message, "reply is empty");
        *ret = root;
        return 0;
}

/* If o is an etcd error (unary: {"error":"…","code":N,"message":"…"};
 * in a stream: {"error":{"grpc_code":N,"message":"…",…}}): 1 with the code
 * and message; 0 if it is not one; -EBADMSG. */
static int parse_error_object(JsonObject *o, int64_t *ret_code, const char **ret_text, char **ret_message) {
        JsonNode *e = json_object_get_member(o, "error");
        const char *text = NULL;
        JsonObject *inner;
        int r;

        if (!e || json_object_has_member(o, "header"))
                return 0; /* e.g. LeaseGrantResponse has an "error" string */

        if (JSON_NODE_HOLDS_OBJECT(e)) {
                inner = json_node_get_object(e);
                r = get_int64(inner, "grpc_code", ret_code, ret_message);
                if (r < 0)
                        return r;
                r = get_string(inner, "message", &text, ret_message);
                if (r < 0)
                        return r;
        } else if (JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_STRING) {
                if (!json_object_has_member(o, "code"))
                        return bad_message(ret_message, "error reply without a code");
                r = get_int64(o, "code", ret_code, ret_message);
                if (r < 0)
                        return r;
                r = get_string(o, "message", &text, ret_message);
                if (r < 0)
                        return r;
                if (!text)
                        text = json_node_get_string(e);
        } else
                return bad_message(ret_message, "'error' is neither a string nor an object");

        *ret_text = text && *text ? text : "etcd gave no reason";
        return 1;
}

int etcd_parse_reply(long http_status, const void *body, size_t size, JsonNode **ret_reply, char **ret_message) {
        g_autoptr(GPtrArray) objects = g_ptr_array_new_with_free_func((GDestroyNotify) json_node_unref);
        _cleanup_(etcd_json_splitter_freep) EtcdJsonSplitter *splitter = etcd_json_splitter_new();
        g_autofree char *json_error = NULL;
        JsonNode *reply = NULL;
        int r;

        /* A reply from a streaming path may carry more than one object. */
        r = etcd_json_splitter_feed(splitter, body, size, objects, &json_error);
        if (r >= 0 && !etcd_json_splitter_is_empty(splitter)) {
                r = -EBADMSG;
                json_error = g_strdup("reply ends inside a JSON object");
        }
        if (r >= 0 && objects->len == 0) {
                r = -EBADMSG;
                json_error = g_strdup("reply is empty");
        }

        if (r >= 0) {
                for (size_t i = 0; i < objects->len; i++) {
                        JsonObject *o = json_node_get_object(objects->pdata[i]);
                        const char *text;
                        int64_t code;

                        r = parse_error_object(o, &code, &text, ret_message);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                continue;

                        if (code == GRPC_UNAVAILABLE) {
                                *ret_message = g_strdup_printf("%s (unavailable)", text);
                                return 1;
                        }
                        if (code == GRPC_OK)
                                return bad_message(ret_message, "error reply with code 0: %s", text);
                        *ret_message = g_strdup(text);
                        return etcd_grpc_code_to_errno(code);
                }

                if (objects->len > 1)
                        return bad_message(ret_message, "reply holds %u JSON objects, expected one",
                                           objects->len);
                reply = objects->pdata[0];
        }

        if (http_status >= 500) {
                g_autofree char *text = excerpt(body, size);

                *ret_message = g_strdup_printf("HTTP %ld%s%s", http_status, *text ? ": " : "", text);
                return 1;
        }
        if (http_status != 200) {
                g_autofree char *text = excerpt(body, size);

                return bad_message(ret_message, "unexpected HTTP status %ld%s%s", http_status, *text ? ": " : "",
                                   text);
        }
        if (!reply)
                return bad_message(ret_message, "%s", json_error);

        /* Streaming paths wrap each message: {"result":{…}}. */
        if (json_object_get_size(json_node_get_object(reply)) == 1) {
                JsonObject *result;

                r = get_object(json_node_get_object(reply), "result", &result, ret_message);
                if (r < 0)
                        return r;
                if (result) {
                        *ret_reply = json_node_ref(json_object_get_member(json_node_get_object(reply), "result"));
                        return 0;
                }
        }

        *ret_reply = json_node_ref(reply);
        return 0;
}

/* ---- the stream splitter ----------------------------------------------------- */

EtcdJsonSplitter *etcd_json_splitter_new(void) {
        EtcdJsonSplitter *s = g_new0(EtcdJsonSplitter, 1);

        s->partial = g_byte_array_new();
        return s;
}

EtcdJsonSplitter *etcd_json_splitter_free(EtcdJsonSplitter *s) {
        if (!s)
                return NULL;
        g_byte_array_unref(s->partial);
        g_free(s);
        return NULL;
}

bool etcd_json_splitter_is_empty(const EtcdJsonSplitter *s) {
        return s->depth == 0 && s->partial->len == 0;
}

static int splitter_emit(EtcdJsonSplitter *s, const char *data, size_t size, GPtrArray *out, char **ret_message) {
        JsonNode *node;
        int r;

        if (s->partial->len > 0) {
                g_byte_array_append(s->partial, (const guint8 *) data, (guint) size);
                r = parse_json((const char *) s->partial->data, s->partial->len, &node, ret_message);
                g_byte_array_set_size(s->partial, 0);
        } else
                r = parse_json(data, size, &node, ret_message);
        if (r < 0)
                return r;
        if (!JSON_NODE_HOLDS_OBJECT(node)) {
                json_node_unref(node);
                return bad_message(ret_message, "stream holds something other than an object");
        }

        g_ptr_array_add(out, node);
        return 0;
}

int etcd_json_splitter_feed(EtcdJsonSplitter *s, const void *data, size_t size, GPtrArray *out,
                            char **ret_message) {
        const char *p = data;
        size_t start = 0; /* where the current object starts in p */
        int r;

        for (size_t i = 0; i < size; i++) {
                char ch = p[i];

                if (s->depth == 0) {
                        if (IN_SET(ch, ' ', '\t', '\r', '\n'))
                                continue;
                        if (ch != '{')
                                return bad_message(ret_message, "unexpected byte 0x%02x between JSON objects",
                                                   (unsigned) (unsigned char) ch);
                        s->depth = 1;
                        start = i;
                        continue;
                }

                if (s->in_string) {
                        if (s->escape)
                                s->escape = false;
                        else if (ch == '\\')
                                s->escape = true;
                        else if (ch == '"')
                                s->in_string = false;
                        continue;
                }

                switch (ch) {
                case '"':
                        s->in_string = true;
                        break;
                case '{':
                case '[':
                        if (++s->depth > JSON_DEPTH_MAX)
                                return bad_message(ret_message, "JSON nested deeper than %u levels", JSON_DEPTH_MAX);
                        break;
                case '}':
                case ']':
                        if (--s->depth == 0) {
                                r = splitter_emit(s, p + start, i + 1 - start, out, ret_message);
                                if (r < 0)
                                        return r;
                        }
                        break;
                default:
                        break;
                }
        }

        if (s->depth > 0) {
                if (s->partial->len + (size - start) > REPLY_MAX) {
                        if (ret_message)
                                *ret_message = g_strdup_printf("JSON object over %u bytes", REPLY_MAX);
                        return -EMSGSIZE;
                }
                g_byte_array_append(s->partial, (const guint8 *) p + start, (guint) (size - start));
        }
        return 0;
}

/* ---- watch messages ------------------------------------------------------- */

static void event_free(EtcdEvent *e) {
        EventBox *box = (EventBox *) e;

        if (!e)
                return;
        key_value_clear(&box->event.kv);
        key_value_clear(&box->prev);
        g_free(box);
}

static int parse_event(JsonNode *n, int64_t revision, EtcdEvent **ret, char **ret_message) {
        g_autofree EventBox *box = g_new0(EventBox, 1);
        const char *type;
        JsonObject *o;
        JsonNode *kv, *prev;
        int r;

        if (!JSON_NODE_HOLDS_OBJECT(n))
                return bad_message(ret_message, "a watch event is not an object");
        o = json_node_get_object(n);

        r = get_string(o, "type", &type, ret_message);
        if (r < 0)
                return r;
        if (!type || streq(type, "PUT"))
                box->event.type = ETCD_EVENT_PUT;
        else if (streq(type, "DELETE"))
                box->event.type = ETCD_EVENT_DELETE;
        else
                return bad_message(ret_message, "unknown watch event type '%s'", type);

        kv = json_object_get_member(o, "kv");
        if (!kv)
                return bad_message(ret_message, "watch event without kv");
        r = parse_key_value(kv, &box->event.kv, ret_message);
        if (r < 0)
                return r;

        prev = json_object_get_member(o, "prev_kv");
        if (prev && !JSON_NODE_HOLDS_NULL(prev)) {
                r = parse_key_value(prev, &box->prev, ret_message);
                if (r < 0) {
                        key_value_clear(&box->event.kv);
                        return r;
                }
                box->event.prev_kv = &box->prev;
        }

        box->event.revision = revision;
        *ret = &TAKE_PTR(box)->event;
        return 0;
}

int etcd_parse_watch_message(JsonNode *message, GPtrArray **ret_events, bool *ret_created, int64_t *ret_revision,
                             char **ret_message) {
        g_autoptr(GPtrArray) events = g_ptr_array_new_with_free_func((GDestroyNotify) event_free);
        JsonObject *o, *result, *header;
        const char *text, *reason;
        bool created, canceled;
        int64_t code, revision = 0, compact_revision;
        JsonArray *a;
        int r;

        if (!JSON_NODE_HOLDS_OBJECT(message))
                return bad_message(ret_message, "watch message is not an object");
        o = json_node_get_object(message);

        r = parse_error_object(o, &code, &text, ret_message);
        if (r < 0)
                return r;
        if (r > 0) {
                *ret_message = g_strdup_printf("watch stream error: %s", text);
                return IN_SET(code, GRPC_UNAVAILABLE, GRPC_CANCELLED) ? -ECONNRESET : etcd_grpc_code_to_errno(code);
        }

        r = get_object(o, "result", &result, ret_message);
        if (r < 0)
                return r;
        if (!result)
                return bad_message(ret_message, "watch message without result");

        r = get_object(result, "header", &header, ret_message);
        if (r >= 0 && header)
                r = get_int64(header, "revision", &revision, ret_message);
        if (r >= 0)
                r = get_bool(result, "created", &created, ret_message);
        if (r >= 0)
                r = get_bool(result, "canceled", &canceled, ret_message);
        if (r >= 0)
                r = get_int64(result, "compact_revision", &compact_revision, ret_message);
        if (r >= 0)
                r = get_string(result, "cancel_reason", &reason, ret_message);
        if (r >= 0)
                r = get_array(result, "events", &a, ret_message);
        if (r < 0)
                return r;

        if (compact_revision > 0) {
                *ret_message = g_strdup_printf("watch canceled: its start revision was compacted "
                                               "(oldest revision left: %" PRIi64 ")", compact_revision);
                return -ERANGE;
        }
        if (canceled) {
                *ret_message = g_strdup_printf("watch canceled by etcd: %s",
                                               reason && *reason ? reason : "no reason given");
                return -ECANCELED;
        }

        for (size_t i = 0; a && i < json_array_get_length(a); i++) {
                EtcdEvent *e = NULL;

                r = parse_event(json_array_get_element(a, i), revision, &e, ret_message);
                if (r < 0)
                        return r;
                g_ptr_array_add(events, e);
        }

        *ret_events = TAKE_PTR(events);
        *ret_created = created;
        *ret_revision = revision;
        return 0;
}

/* ---- requests ----------------------------------------------------------- */

static JsonNode *node_take_object(JsonObject *o) {
        JsonNode *n = json_node_init_object(json_node_alloc(), o);

        json_object_unref(o);
        return n;
}

static void set_bytes(JsonObject *o, const char *member, const void *data, size_t size) {
        g_autofree char *encoded = g_base64_encode(data, size);

        json_object_set_string_member(o, member, encoded ?: "");
}

static void set_int64(JsonObject *o, const char *member, int64_t v) {
        char buf[32];

        /* As etcd writes them: int64 as strings. */
        snprintf(buf, sizeof buf, "%" PRIi64, v);
        json_object_set_string_member(o, member, buf);
}

static void set_key(JsonObject *o, const void *key, size_t key_size, bool prefix) {
        g_autofree guchar *end = NULL;
        size_t n;

        if (!prefix) {
                set_bytes(o, "key", key, key_size);
                return;
        }

        if (key_size == 0) {
                /* Every key: from "\0" to the end ("\0" as range_end). */
                set_bytes(o, "key", "", 1);
                set_bytes(o, "range_end", "", 1);
                return;
        }

        set_bytes(o, "key", key, key_size);
        end = g_malloc(key_size);
        memcpy(end, key, key_size);
        for (n = key_size; n > 0; n--)
                if (end[n - 1] < 0xff) {
                        end[n - 1]++;
                        break;
                }
        if (n == 0)
                set_bytes(o, "range_end", "", 1); /* all 0xff: no end */
        else
                set_bytes(o, "range_end", end, n);
}

static char *node_to_body(JsonNode *n) {
        return json_to_string(n, false);
}

/* ---- the transport: libcurl on sd-event ----------------------------------- */

static void pending_free(Pending *p) {
        if (!p)
                return;
        event_free(p->event);
        g_free(p->message);
        g_free(p);
}

static void client_queue(EtcdClient *c, Pending *p) {
        g_queue_push_tail(&c->pending, p);
        (void) sd_event_source_set_enabled(c->dispatch, SD_EVENT_ON);
}

/* Drops what is queued for a call or watch that ends without callbacks. */
static void client_unqueue(EtcdClient *c, EtcdCall *call, EtcdWatch *w) {
        GList *l = c->pending.head;

        while (l) {
                GList *next = l->next;
                Pending *p = l->data;

                if ((call && p->call == call) || (w && p->watch == w)) {
                        g_queue_delete_link(&c->pending, l);
                        pending_free(p);
                }
                l = next;
        }
}

static void transfer_detach(Transfer *t) {
        if (t->attached) {
                (void) curl_multi_remove_handle(t->client->multi, t->easy);
                t->attached = false;
        }
}

static void transfer_done_free(Transfer *t) {
        if (t->easy)
                curl_easy_cleanup(t->easy);
        curl_slist_free_all(t->headers);
        g_free(t->path);
        /* The authentication's body holds the password. */
        if (t->is_auth && t->body)
                explicit_bzero(t->body, strlen(t->body));
        g_free(t->body);
        if (t->response)
                g_byte_array_unref(t->response);
        if (t->failures)
                g_string_free(t->failures, true);
}

static size_t on_write_reply(char *data, size_t size, size_t nmemb, void *userdata) {
        Transfer *t = userdata;
        size_t n = size * nmemb;

        if (t->response->len + n > REPLY_MAX) {
                t->write_error = -EMSGSIZE;
                return 0;
        }
        g_byte_array_append(t->response, (const guint8 *) data, (guint) n);
        return n;
}

static size_t on_write_watch(char *data, size_t size, size_t nmemb, void *userdata);

static int curl_setopt_errno(CURLcode code) {
        if (code == CURLE_OK)
                return 0;
        /* Anything else: this libcurl cannot do TLS as asked. */
        return code == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EOPNOTSUPP;
}

/* https:// endpoints: verification on, whatever libcurl's defaults;
 * then the client's files, if any. */
static int transfer_set_tls(Transfer *t, const EtcdClient *c) {
        int r;

        r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYPEER, 1L));
        if (r >= 0)
                r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYHOST, 2L));
        if (r >= 0 && c->ca_file) {
                r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_CAINFO, c->ca_file));
                /* Only that bundle: not also the system's certificate directory. */
                if (r >= 0)
                        r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_CAPATH, NULL));
        }
        if (r >= 0 && c->cert_file) {
                r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_SSLCERT, c->cert_file));
                if (r >= 0)
                        r = curl_setopt_errno(curl_easy_setopt(t->easy, CURLOPT_SSLKEY, c->key_file));
        }
        return r;
}

static int transfer_init(Transfer *t, TransferKind kind, EtcdClient *c, const char *path, char *body) {
        t->kind = kind;
        t->client = c;
        t->path = g_strdup(path);
        t->body = body;
        t->response = g_byte_array_new();
        t->failures = g_string_new(NULL);

        t->easy = curl_easy_init();
        if (!t->easy)
                return -ENOMEM;

        if (curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
            /* An empty proxy: no http_proxy from the environment. */
            curl_easy_setopt(t->easy, CURLOPT_PROXY, "") != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(t->body)) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPIDLE, 10L) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPINTVL, 5L) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION,
                             kind == TRANSFER_WATCH ? on_write_watch : on_write_reply) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t) != CURLE_OK)
                return -ENOMEM;

        return transfer_set_tls(t, c);
}

static int on_watch_create_timeout(sd_event_source *s, uint64_t usec, void *userdata);

/* The headers of the next attempt, with the client's current token. */
static int transfer_set_headers(Transfer *t) {
        EtcdClient *c = t->client;
        g_autofree char *authorization = NULL;
        const char *lines[3] = {
                "Content-Type: application/json",
                /* No "Expect: 100-continue" round trip for larger bodies. */
                "Expect:",
        };
        struct curl_slist *h = NULL;

        /* etcd takes the bare token from this header (no "Bearer"). */
        if (!t->is_auth && c->token)
                lines[2] = authorization = g_strconcat("Authorization: ", c->token, NULL);

        for (size_t i = 0; i < G_N_ELEMENTS(lines) && lines[i]; i++) {
                struct curl_slist *n = curl_slist_append(h, lines[i]);

                if (!n) {
                        curl_slist_free_all(h);
                        return -ENOMEM;
                }
                h = n;
        }
        if (curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, h) != CURLE_OK) {
                curl_slist_free_all(h);
                return -ENOMEM;
        }
        curl_slist_free_all(t->headers);
        t->headers = h;
        t->token_generation = c->token_generation;
        return 0;
}

/* Starts the next attempt. -ETIMEDOUT if the call's time is up. */
static int transfer_attempt(Transfer *t) {
        EtcdClient *c = t->client;
        g_autofree char *url = NULL;
        uint64_t now = now_usec(), budget;
        long budget_msec;
        int r;

        assert(t->n_tried < c->n_endpoints);
        /* The first attempt always starts (its share may be tiny). */
        if (t->n_tried > 0 && now >= t->deadline)
                return -ETIMEDOUT;

        /* Each endpoint not tried yet gets an equal share of what is left. */
        budget = (t->deadline > now ? t->deadline - now : 0) / (c->n_endpoints - t->n_tried);
        budget_msec = (long) MAX(budget / USEC_PER_MSEC, UINT64_C(1));

        t->endpoint = (t->first_endpoint + t->n_tried) % c->n_endpoints;
        t->n_tried++;
        t->errbuf[0] = '\0';
        t->write_error = 0;
        g_byte_array_set_size(t->response, 0);
        if (t->kind == TRANSFER_WATCH) {
                EtcdWatch *w = (EtcdWatch *) t;

                /* Nothing of an earlier attempt's stream carries over. */
                etcd_json_splitter_free(w->splitter);
                w->splitter = etcd_json_splitter_new();
        }

        r = transfer_set_headers(t);
        if (r < 0)
                return r;

        url = g_strconcat(c->endpoints[t->endpoint], t->path, NULL);
        if (curl_easy_setopt(t->easy, CURLOPT_URL, url) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, budget_msec) != CURLE_OK ||
            curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, t->kind == TRANSFER_CALL ? budget_msec : 0L) != CURLE_OK)
                return -ENOMEM;

        if (t->kind == TRANSFER_WATCH) {
                EtcdWatch *w = (EtcdWatch *) t;

                /* A stream never ends: what has a deadline is etcd's "created". */
                if (!w->create_timer) {
                        r = sd_event_add_time(c->event, &w->create_timer, CLOCK_MONOTONIC, now + budget, USEC_PER_MSEC,
                                              on_watch_create_timeout, w);
                        if (r < 0)
                                return r;
                        (void) sd_event_source_set_description(w->create_timer, "etcd-watch-create");
                } else {
                        r = sd_event_source_set_time(w->create_timer, now + budget);
                        if (r < 0)
                                return r;
                        r = sd_event_source_set_enabled(w->create_timer, SD_EVENT_ONESHOT);
                        if (r < 0)
                                return r;
                }
        }

        if (curl_multi_add_handle(c->multi, t->easy) != CURLM_OK)
                return -ENOMEM;
        t->attached = true;
        return 0;
}

static void call_finish(EtcdCall *call, int error, char *message, JsonNode *reply) {
        Pending *p = g_new0(Pending, 1);

        call->error = error;
        call->error_message = message;
        call->reply = reply;
        p->kind = PENDING_CALL_DONE;
        p->call = call;
        client_queue(call->transfer.client, p);
}

static void watch_finish(EtcdWatch *w, int error, char *message) {
        Pending *p = g_new0(Pending, 1);

        w->finished = true;
        if (w->create_timer)
                (void) sd_event_source_set_enabled(w->create_timer, SD_EVENT_OFF);
        p->kind = PENDING_WATCH_ERROR;
        p->watch = w;
        p->error = error;
        p->message = message;
        client_queue(w->transfer.client, p);
}

static void transfer_finish(Transfer *t, int error, char *message) {
        if (t->kind == TRANSFER_CALL)
                call_finish((EtcdCall *) t, error, message, NULL);
        else
                watch_finish((EtcdWatch *) t, error, message);
}

/* An attempt failed for a reason another endpoint may not have: try the
 * next one, or give up naming every endpoint tried. */
static void transfer_fail_over(Transfer *t, int error, const char *reason) {
        EtcdClient *c = t->client;
        int r;

        if (t->failures->len > 0)
                g_string_append(t->failures, "; ");
        g_string_append_printf(t->failures, "%s: %s", c->endpoints[t->endpoint], reason);
        if (t->failure_error == 0)
                t->failure_error = error;
        else if (t->failure_error != error)
                t->failures_disagree = true;

        if (t->n_tried < c->n_endpoints) {
                r = transfer_attempt(t);
                if (r >= 0)
                        return;
                if (r != -ETIMEDOUT) {
                        transfer_finish(t, r, g_strdup_printf("Failed to start a request to etcd: %s",
                                                              g_strerror(-r)));
                        return;
                }
                transfer_finish(t, -ETIMEDOUT,
                                g_strdup_printf("etcd did not answer POST %s within %" PRIu64 " ms "
                                                "(%zu of %zu endpoints tried): %s",
                                                t->path, c->call_timeout_usec / USEC_PER_MSEC, t->n_tried,
                                                c->n_endpoints, t->failures->str));
                return;
        }

        transfer_finish(t, t->failures_disagree ? -EHOSTUNREACH : t->failure_error,
                        g_strdup_printf("No etcd endpoint could serve POST %s: %s", t->path, t->failures->str));
}

/* The errno for a failed transfer; *ret_fail_over: whether another
 * endpoint might do better. */
static int curl_result_to_errno(Transfer *t, CURLcode result, bool *ret_fail_over) {
        long os_errno = 0;

        *ret_fail_over = true;
        switch (result) {
        case CURLE_COULDNT_CONNECT:
                (void) curl_easy_getinfo(t->easy, CURLINFO_OS_ERRNO, &os_errno);
                return os_errno > 0 ? -(int) os_errno : -ECONNREFUSED;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_COULDNT_RESOLVE_HOST:
                return -EHOSTUNREACH;
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
                return -ECONNRESET;
        case CURLE_OUT_OF_MEMORY:
                *ret_fail_over = false;
                return -ENOMEM;
        case CURLE_WRITE_ERROR:
                *ret_fail_over = false;
                return t->write_error < 0 ? t->write_error : -EIO;
        default:
                if (result >= CURLE_SSL_CONNECT_ERROR && result <= CURLE_SSL_CLIENTCERT)
                        return -EPROTO;
                return -EIO;
        }
}

/* ---- authentication ----------------------------------------------------------- */

static int client_authenticate(EtcdClient *c);

/* Starts the transfer afresh (its whole budget, from the endpoint that
 * answered last), or parks it until the client has a token. */
static int transfer_start(Transfer *t) {
        EtcdClient *c = t->client;
        int r;

        if (!t->is_auth && c->user && !c->authenticated) {
                r = client_authenticate(c);
                if (r < 0)
                        return r;
                g_queue_push_tail(&c->auth_waiting, t);
                t->auth_link = c->auth_waiting.tail;
                return 0;
        }

        t->first_endpoint = c->preferred;
        t->n_tried = 0;
        t->deadline = now_usec() + c->call_timeout_usec;
        g_string_truncate(t->failures, 0);
        t->failure_error = 0;
        t->failures_disagree = false;
        return transfer_attempt(t);
}

/* Out of the client's auth_waiting queue, if there. */
static void transfer_unpark(Transfer *t) {
        if (!t->auth_link)
                return;
        g_queue_delete_link(&t->client->auth_waiting, t->auth_link);
        t->auth_link = NULL;
}

/* etcd's words for a token it does not take: unknown or expired ("invalid
 * auth token"), issued before a change of users or roles ("revision of
 * auth store is old"), or none sent since authentication was enabled
 * ("user name is empty"). Watches get them inside a cancel reason. */
static bool is_token_error(const char *message) {
        return message &&
                (strstr(message, "etcdserver: invalid auth token") ||
                 strstr(message, "etcdserver: revision of auth store is old") ||
                 strstr(message, "etcdserver: user name is empty"));
}

/* After etcd refused the token of t's attempt: authenticate again (unless
 * another transfer already did, or is doing it) and start t again, once per
 * transfer. false if t is not to be retried. */
static bool transfer_retry_with_new_token(Transfer *t, const char *message) {
        EtcdClient *c = t->client;
        int r;

        if (t->is_auth || !c->user || t->reauthenticated || !is_token_error(message))
                return false;

        t->reauthenticated = true;
        /* Only the token this transfer sent is dropped: if a newer one came
         * meanwhile, it is used at once, and one authentication serves all. */
        if (t->token_generation == c->token_generation)
                c->authenticated = false;

        r = transfer_start(t);
        if (r < 0)
                transfer_finish(t, r, g_strdup_printf("Failed to start a request to etcd: %s", g_strerror(-r)));
        return true;
}

static void on_authenticated(EtcdCall *call, int error, const char *error_message, JsonNode *reply,
                             void *userdata) {
        EtcdClient *c = userdata;
        const char *endpoint = c->endpoints[call->transfer.endpoint], *token = NULL;
        g_autofree char *message = NULL, *parse_message = NULL;
        Transfer *t;
        int r;

        c->auth_call = NULL;

        if (error >= 0) {
                error = get_string(json_node_get_object(reply), "token", &token, &parse_message);
                if (error >= 0 && (!token || !*token))
                        error = bad_message(&parse_message, "reply without a token");
                error_message = parse_message;
        } else if (error == -ESTALE && strstr(error_message, "authentication is not enabled")) {
                /* As etcdctl: go on without a token; should etcd turn
                 * authentication on later, the first refusal brings one. */
                error = 0;
                token = NULL;
        }

        if (error < 0) {
                /* A wrong name or password is INVALID_ARGUMENT to etcd;
                 * to the caller it is a refusal. */
                if (error == -EINVAL)
                        error = -EACCES;
                message = g_strdup_printf("Failed to authenticate to etcd as user '%s' at %s: %s", c->user,
                                          endpoint, error_message);
                while ((t = g_queue_pop_head(&c->auth_waiting))) {
                        t->auth_link = NULL;
                        transfer_finish(t, error, g_strdup(message));
                }
                return;
        }

        erase_free(c->token);
        c->token = g_strdup(token);
        c->authenticated = true;
        c->token_generation++;
        if (token)
                c->n_authentications++;

        while ((t = g_queue_pop_head(&c->auth_waiting))) {
                t->auth_link = NULL;
                r = transfer_start(t);
                if (r < 0)
                        transfer_finish(t, r, g_strdup_printf("Failed to start a request to etcd: %s",
                                                              g_strerror(-r)));
        }
}

static int call_start(EtcdClient *c, const char *path, JsonNode *request, CallKind kind, bool is_auth,
                      EtcdCall **ret);

/* Starts the one authentication, unless it is in flight already. */
static int client_authenticate(EtcdClient *c) {
        g_autoptr(JsonNode) request = NULL;
        JsonObject *o;
        EtcdCall *call;
        int r;

        if (c->auth_call)
                return 0;

        o = json_object_new();
        json_object_set_string_member(o, "name", c->user);
        json_object_set_string_member(o, "password", c->password);
        request = node_take_object(o);

        r = call_start(c, "/v3/auth/authenticate", request, CALL_GENERIC, /* is_auth= */ true, &call);
        if (r < 0)
                return r;
        call->callback.generic = on_authenticated;
        call->userdata = c;
        c->auth_call = call;
        return 0;
}

static void call_done(EtcdCall *call, CURLcode result) {
        Transfer *t = &call->transfer;
        EtcdClient *c = t->client;
        JsonNode *reply = NULL;
        char *message = NULL;
        bool fail_over;
        long status = 0;
        int r;

        if (result != CURLE_OK) {
                r = curl_result_to_errno(t, result, &fail_over);
                if (r == -EMSGSIZE)
                        message = g_strdup_printf("etcd's reply to POST %s exceeds %u bytes", t->path, REPLY_MAX);
                else
                        message = g_strdup(t->errbuf[0] ? t->errbuf : curl_easy_strerror(result));
                if (fail_over)
                        transfer_fail_over(t, r, message);
                else
                        call_finish(call, r, TAKE_PTR(message), NULL);
                g_free(message);
                return;
        }

        (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
        r = etcd_parse_reply(status, t->response->data, t->response->len, &reply, &message);
        if (r == 1) {
                transfer_fail_over(t, -EHOSTUNREACH, message);
                g_free(message);
                return;
        }

        /* It answered, if only with an error: start there next time. */
        c->preferred = t->endpoint;
        if (r < 0 && transfer_retry_with_new_token(t, message)) {
                g_free(message);
                return;
        }
        call_finish(call, r, message, reply);
}

static void watch_done(EtcdWatch *w, CURLcode result) {
        Transfer *t = &w->transfer;
        g_autofree char *message = NULL;
        JsonNode *reply = NULL;
        bool fail_over = true;
        long status = 0;
        int r;

        if (w->finished)
                return; /* its write callback ended it */
        if (w->token_refused) {
                /* Only now: a transfer cannot restart from its own callback. */
                w->token_refused = false;
                if (transfer_retry_with_new_token(t, "etcdserver: invalid auth token"))
                        return;
        }

        (void) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);

        if (w->created) {
                /* Streams do not end while etcd serves them. */
                if (result == CURLE_OK)
                        message = g_strdup_printf("watch stream from %s ended", t->client->endpoints[t->endpoint]);
                else
                        message = g_strdup_printf("watch stream from %s lost: %s",
                                                  t->client->endpoints[t->endpoint],
                                                  t->errbuf[0] ? t->errbuf : curl_easy_strerror(result));
                watch_finish(w, -ECONNRESET, TAKE_PTR(message));
                return;
        }

        if (result != CURLE_OK) {
                r = curl_result_to_errno(t, result, &fail_over);
                message = g_strdup(t->errbuf[0] ? t->errbuf : curl_easy_strerror(result));
        } else if (status == 200) {
                r = -ECONNRESET;
                message = g_strdup("stream ended before etcd created the watch");
        } else {
                r = etcd_parse_reply(status, t->response->data, t->response->len, &reply, &message);
                if (reply)
                        json_node_unref(reply);
                if (r == 0) {
                        r = -EBADMSG;
                        g_free(message);
                        message = g_strdup_printf("unexpected HTTP status %ld", status);
                }
                if (r == 1)
                        r = -EHOSTUNREACH;
                else {
                        if (r < 0 && transfer_retry_with_new_token(t, message))
                                return;
                        fail_over = false;
                }
        }

        if (fail_over)
                transfer_fail_over(t, r, message);
        else
                watch_finish(w, r, TAKE_PTR(message));
}

static void client_process_done(EtcdClient *c) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(c->multi, &left))) {
                char *priv = NULL;
                Transfer *t;
                CURLcode result;

                if (msg->msg != CURLMSG_DONE)
                        continue;

                result = msg->data.result;
                (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
                t = (Transfer *) priv;
                assert(t);
                transfer_detach(t);

                if (t->kind == TRANSFER_CALL)
                        call_done((EtcdCall *) t, result);
                else
                        watch_done((EtcdWatch *) t, result);
        }
}

static int on_curl_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        EtcdClient *c = userdata;
        int action = 0, running;

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & EPOLLERR)
                action |= CURL_CSELECT_ERR;

        (void) curl_multi_socket_action(c->multi, fd, action, &running);
        client_process_done(c);
        return 0;
}

static int on_curl_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        EtcdClient *c = userdata;
        int running;

        (void) curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        client_process_done(c);
        return 0;
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        EtcdClient *c = userp;
        sd_event_source *s = g_hash_table_lookup(c->sockets, GINT_TO_POINTER(fd));
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                g_hash_table_remove(c->sockets, GINT_TO_POINTER(fd));
                return 0;
        }

        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;

        if (s)
                r = sd_event_source_set_io_events(s, events);
        else {
                r = sd_event_add_io(c->event, &s, fd, events, on_curl_io, c);
                if (r >= 0) {
                        (void) sd_event_source_set_description(s, "etcd-socket");
                        g_hash_table_insert(c->sockets, GINT_TO_POINTER(fd), s);
                }
        }
        return r < 0 ? -1 : 0;
}

static int on_curl_timer_change(CURLM *multi, long timeout_ms, void *userp) {
        EtcdClient *c = userp;
        uint64_t now;

        if (timeout_ms < 0)
                return sd_event_source_set_enabled(c->timer, SD_EVENT_OFF) < 0 ? -1 : 0;

        if (sd_event_now(c->event, CLOCK_MONOTONIC, &now) < 0)
                now = now_usec();
        if (sd_event_source_set_time(c->timer, now + (uint64_t) timeout_ms * USEC_PER_MSEC) < 0 ||
            sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT) < 0)
                return -1;
        return 0;
}

/* ---- calls ------------------------------------------------------------------ */

static EtcdCall *call_free(EtcdCall *call) {
        if (!call)
                return NULL;
        transfer_done_free(&call->transfer);
        g_free(call->error_message);
        if (call->reply)
                json_node_unref(call->reply);
        g_free(call);
        return NULL;
}

/* Unlinks the call from its client (which must exist): no callback runs. */
static void call_detach(EtcdCall *call) {
        EtcdClient *c = call->transfer.client;

        transfer_detach(&call->transfer);
        transfer_unpark(&call->transfer);
        client_unqueue(c, call, NULL);
        g_queue_delete_link(&c->calls, call->transfer.link);
        call->transfer.link = NULL;
        call->transfer.client = NULL;
}

void etcd_call_cancel(EtcdCall *call) {
        if (!call || call->in_callback)
                return;
        call_detach(call);
        call_free(call);
}

static int call_start(EtcdClient *c, const char *path, JsonNode *request, CallKind kind, bool is_auth,
                      EtcdCall **ret) {
        EtcdCall *call;
        int r;

        if (!c || !path || path[0] != '/' || !request)
                return -EINVAL;

        call = g_new0(EtcdCall, 1);
        call->kind = kind;
        call->transfer.is_auth = is_auth;
        r = transfer_init(&call->transfer, TRANSFER_CALL, c, path, node_to_body(request));
        if (r >= 0)
                r = transfer_start(&call->transfer);
        if (r < 0) {
                transfer_detach(&call->transfer);
                transfer_unpark(&call->transfer);
                call_free(call);
                return r;
        }

        g_queue_push_tail(&c->calls, call);
        call->transfer.link = c->calls.tail;
        *ret = call;
        return 0;
}

int etcd_call(EtcdClient *c, const char *path, JsonNode *request, EtcdCallback callback, void *userdata,
              EtcdCall **ret_call) {
        EtcdCall *call;
        int r;

        if (!callback)
                return -EINVAL;

        r = call_start(c, path, request, CALL_GENERIC, /* is_auth= */ false, &call);
        if (r < 0)
                return r;
        call->callback.generic = callback;
        call->userdata = userdata;
        if (ret_call)
                *ret_call = call;
        return 0;
}

/* Decodes the reply for a typed callback and calls it. */
static void call_invoke(EtcdCall *call) {
        g_autofree char *message = NULL;
        const char *error_message = call->error_message;
        int error = call->error, r = 0;
        int64_t a = 0, b = 0;

        switch (call->kind) {
        case CALL_GENERIC:
                call->callback.generic(call, error, error_message, error < 0 ? NULL : call->reply, call->userdata);
                return;

        case CALL_LEASE_GRANT:
                if (error >= 0) {
                        r = etcd_parse_header_revision(call->reply, &b, &message);
                        if (r >= 0)
                                r = get_int64(json_node_get_object(call->reply), "ID", &a, &message);
                        if (r >= 0)
                                r = get_int64(json_node_get_object(call->reply), "TTL", &b, &message);
                        if (r >= 0)
                                r = get_string(json_node_get_object(call->reply), "error", &error_message,
                                               &message);
                        if (r >= 0 && error_message && *error_message) {
                                /* LeaseGrantResponse has an error string of its own. */
                                message = g_strdup(error_message);
                                r = -EIO;
                        } else if (r >= 0 && a == 0)
                                r = bad_message(&message, "lease grant answered without a lease ID");
                }
                if (r < 0 || error < 0)
                        call->callback.lease_grant(call, r < 0 ? r : error, r < 0 ? message : error_message, 0, 0,
                                                   call->userdata);
                else
                        call->callback.lease_grant(call, 0, NULL, a, b, call->userdata);
                return;

        case CALL_LEASE_KEEPALIVE:
                if (error >= 0) {
                        r = etcd_parse_header_revision(call->reply, &b, &message);
                        if (r >= 0)
                                r = get_int64(json_node_get_object(call->reply), "TTL", &a, &message);
                        if (r >= 0 && a <= 0) {
                                message = g_strdup_printf("lease %" PRIi64 " not found (expired or revoked)",
                                                          call->lease_id);
                                r = -ENOENT;
                        }
                }
                if (r < 0 || error < 0)
                        call->callback.lease_keepalive(call, r < 0 ? r : error, r < 0 ? message : error_message,
                                                       0, call->userdata);
                else
                        call->callback.lease_keepalive(call, 0, NULL, a, call->userdata);
                return;

        case CALL_REVISION:
                if (error >= 0)
                        r = etcd_parse_header_revision(call->reply, &a, &message);
                if (r < 0 || error < 0)
                        call->callback.revision(call, r < 0 ? r : error, r < 0 ? message : error_message, 0,
                                                call->userdata);
                else
                        call->callback.revision(call, 0, NULL, a, call->userdata);
                return;

        case CALL_DELETE:
                if (error >= 0) {
                        r = etcd_parse_header_revision(call->reply, &a, &message);
                        if (r >= 0)
                                r = get_int64(json_node_get_object(call->reply), "deleted", &b, &message);
                }
                if (r < 0 || error < 0)
                        call->callback.delete(call, r < 0 ? r : error, r < 0 ? message : error_message, 0, 0,
                                              call->userdata);
                else
                        call->callback.delete(call, 0, NULL, a, b, call->userdata);
                return;

        case CALL_RANGE: {
                _cleanup_(etcd_range_result_freep) EtcdRangeResult *result = NULL;

                if (error >= 0)
                        r = etcd_parse_range_result(call->reply, &result, &message);
                if (r < 0 || error < 0)
                        call->callback.range(call, r < 0 ? r : error, r < 0 ? message : error_message, NULL,
                                             call->userdata);
                else
                        call->callback.range(call, 0, NULL, result, call->userdata);
                return;
        }

        case CALL_TXN: {
                _cleanup_(etcd_txn_result_freep) EtcdTxnResult *result = NULL;

                if (error >= 0)
                        r = etcd_parse_txn_result(call->reply, &result, &message);
                if (r < 0 || error < 0)
                        call->callback.txn(call, r < 0 ? r : error, r < 0 ? message : error_message, NULL,
                                           call->userdata);
                else
                        call->callback.txn(call, 0, NULL, result, call->userdata);
                return;
        }
        }
}

/* Starts a typed call: request is consumed. Every member of the union
 * is a function pointer: any one says whether it is NULL. */
static int typed_call(EtcdClient *c, const char *path, JsonNode *request, CallKind kind, CallCallback callback,
                      void *userdata, EtcdCall **ret_call) {
        EtcdCall *call;
        int r;

        if (!callback.generic) {
                json_node_unref(request);
                return -EINVAL;
        }

        r = call_start(c, path, request, kind, /* is_auth= */ false, &call);
        json_node_unref(request);
        if (r < 0)
                return r;

        call->callback = callback;
        call->userdata = userdata;
        if (ret_call)
                *ret_call = call;
        return 0;
}

int etcd_lease_grant(EtcdClient *c, int64_t ttl_sec, EtcdLeaseGrantCallback callback, void *userdata,
                     EtcdCall **ret_call) {
        JsonObject *o;

        if (ttl_sec <= 0)
                return -EINVAL;
        o = json_object_new();
        set_int64(o, "TTL", ttl_sec);
        return typed_call(c, "/v3/lease/grant", node_take_object(o), CALL_LEASE_GRANT,
                          (CallCallback) { .lease_grant = callback }, userdata, ret_call);
}

int etcd_lease_keepalive(EtcdClient *c, int64_t lease_id, EtcdLeaseKeepAliveCallback callback, void *userdata,
                         EtcdCall **ret_call) {
        EtcdCall *call;
        JsonObject *o;
        int r;

        o = json_object_new();
        set_int64(o, "ID", lease_id);
        r = typed_call(c, "/v3/lease/keepalive", node_take_object(o), CALL_LEASE_KEEPALIVE,
                       (CallCallback) { .lease_keepalive = callback }, userdata, &call);
        if (r < 0)
                return r;
        call->lease_id = lease_id;
        if (ret_call)
                *ret_call = call;
        return 0;
}

int etcd_lease_revoke(EtcdClient *c, int64_t lease_id, EtcdRevisionCallback callback, void *userdata,
                      EtcdCall **ret_call) {
        JsonObject *o = json_object_new();

        set_int64(o, "ID", lease_id);
        return typed_call(c, "/v3/lease/revoke", node_take_object(o), CALL_REVISION,
                          (CallCallback) { .revision = callback }, userdata, ret_call);
}

static const char *sort_target_name(EtcdSortTarget t) {
        static const char *const names[] = {
                [ETCD_SORT_KEY] = "KEY",
                [ETCD_SORT_VERSION] = "VERSION",
                [ETCD_SORT_CREATE] = "CREATE",
                [ETCD_SORT_MOD] = "MOD",
                [ETCD_SORT_VALUE] = "VALUE",
        };

        return (size_t) t < ELEMENTSOF(names) ? names[t] : NULL;
}

static const char *sort_order_name(EtcdSortOrder o) {
        static const char *const names[] = {
                [ETCD_SORT_NONE] = "NONE",
                [ETCD_SORT_ASCEND] = "ASCEND",
                [ETCD_SORT_DESCEND] = "DESCEND",
        };

        return (size_t) o < ELEMENTSOF(names) ? names[o] : NULL;
}

int etcd_range(EtcdClient *c, const void *key, size_t key_size, const EtcdRangeOptions *options,
               EtcdRangeCallback callback, void *userdata, EtcdCall **ret_call) {
        static const EtcdRangeOptions defaults = {};
        JsonObject *o;

        if (!options)
                options = &defaults;
        if ((!key && key_size > 0) || (key_size == 0 && !options->prefix) || options->revision < 0 ||
            options->limit < 0 || options->max_create_revision < 0 || !sort_target_name(options->sort_target) ||
            !sort_order_name(options->sort_order))
                return -EINVAL;

        o = json_object_new();
        set_key(o, key, key_size, options->prefix);
        if (options->revision > 0)
                set_int64(o, "revision", options->revision);
        if (options->limit > 0)
                set_int64(o, "limit", options->limit);
        if (options->max_create_revision > 0)
                set_int64(o, "max_create_revision", options->max_create_revision);
        json_object_set_string_member(o, "sort_target", sort_target_name(options->sort_target));
        json_object_set_string_member(o, "sort_order", sort_order_name(options->sort_order));
        if (options->keys_only)
                json_object_set_boolean_member(o, "keys_only", true);
        if (options->count_only)
                json_object_set_boolean_member(o, "count_only", true);

        return typed_call(c, "/v3/kv/range", node_take_object(o), CALL_RANGE, (CallCallback) { .range = callback },
                          userdata, ret_call);
}

static JsonObject *put_request(const void *key, size_t key_size, const void *value, size_t value_size,
                               int64_t lease) {
        JsonObject *o = json_object_new();

        set_key(o, key, key_size, false);
        set_bytes(o, "value", value, value_size);
        if (lease != 0)
                set_int64(o, "lease", lease);
        return o;
}

int etcd_put(EtcdClient *c, const void *key, size_t key_size, const void *value, size_t value_size,
             int64_t lease, EtcdRevisionCallback callback, void *userdata, EtcdCall **ret_call) {
        if (!key || key_size == 0 || (!value && value_size > 0))
                return -EINVAL;
        return typed_call(c, "/v3/kv/put", node_take_object(put_request(key, key_size, value, value_size, lease)),
                          CALL_REVISION, (CallCallback) { .revision = callback }, userdata, ret_call);
}

int etcd_delete(EtcdClient *c, const void *key, size_t key_size, bool prefix, EtcdDeleteCallback callback,
                void *userdata, EtcdCall **ret_call) {
        JsonObject *o;

        if ((!key && key_size > 0) || (key_size == 0 && !prefix))
                return -EINVAL;
        o = json_object_new();
        set_key(o, key, key_size, prefix);
        return typed_call(c, "/v3/kv/deleterange", node_take_object(o), CALL_DELETE,
                          (CallCallback) { .delete = callback }, userdata, ret_call);
}

/* ---- transactions ------------------------------------------------------------ */

int etcd_txn_new(EtcdTxn **ret) {
        EtcdTxn *t = g_new0(EtcdTxn, 1);

        t->compare = json_array_new();
        t->success = json_array_new();
        t->failure = json_array_new();
        *ret = t;
        return 0;
}

EtcdTxn *etcd_txn_free(EtcdTxn *t) {
        if (!t)
                return NULL;
        json_array_unref(t->compare);
        json_array_unref(t->success);
        json_array_unref(t->failure);
        g_free(t);
        return NULL;
}

int etcd_txn_compare(EtcdTxn *t, const void *key, size_t key_size, EtcdCompareTarget target,
                     EtcdCompareResult result, int64_t value) {
        static const char *const targets[] = {
                [ETCD_COMPARE_VERSION] = "VERSION",
                [ETCD_COMPARE_CREATE] = "CREATE",
                [ETCD_COMPARE_MOD] = "MOD",
                [ETCD_COMPARE_LEASE] = "LEASE",
        };
        static const char *const members[] = {
                [ETCD_COMPARE_VERSION] = "version",
                [ETCD_COMPARE_CREATE] = "create_revision",
                [ETCD_COMPARE_MOD] = "mod_revision",
                [ETCD_COMPARE_LEASE] = "lease",
        };
        static const char *const results[] = {
                [ETCD_COMPARE_EQUAL] = "EQUAL",
                [ETCD_COMPARE_GREATER] = "GREATER",
                [ETCD_COMPARE_LESS] = "LESS",
                [ETCD_COMPARE_NOT_EQUAL] = "NOT_EQUAL",
        };
        JsonObject *o;

        if (!t || !key || key_size == 0 || (size_t) target >= ELEMENTSOF(targets) ||
            (size_t) result >= ELEMENTSOF(results))
                return -EINVAL;

        o = json_object_new();
        set_key(o, key, key_size, false);
        json_object_set_string_member(o, "target", targets[target]);
        json_object_set_string_member(o, "result", results[result]);
        set_int64(o, members[target], value);
        json_array_add_object_element(t->compare, o);
        return 0;
}

static int txn_add_op(EtcdTxn *t, EtcdTxnBranch branch, const char *kind, JsonObject *request) {
        JsonObject *op = json_object_new();

        json_object_set_object_member(op, kind, request);
        json_array_add_object_element(branch == ETCD_TXN_SUCCESS ? t->success : t->failure, op);
        return 0;
}

static bool txn_branch_valid(EtcdTxnBranch branch) {
        return branch == ETCD_TXN_SUCCESS || branch == ETCD_TXN_FAILURE;
}

int etcd_txn_put(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, const void *value,
                 size_t value_size, int64_t lease) {
        if (!t || !txn_branch_valid(branch) || !key || key_size == 0 || (!value && value_size > 0))
                return -EINVAL;
        return txn_add_op(t, branch, "request_put", put_request(key, key_size, value, value_size, lease));
}

int etcd_txn_delete(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, bool prefix) {
        JsonObject *o;

        if (!t || !txn_branch_valid(branch) || (!key && key_size > 0) || (key_size == 0 && !prefix))
                return -EINVAL;
        o = json_object_new();
        set_key(o, key, key_size, prefix);
        return txn_add_op(t, branch, "request_delete_range", o);
}

int etcd_txn_range(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, bool prefix) {
        JsonObject *o;

        if (!t || !txn_branch_valid(branch) || (!key && key_size > 0) || (key_size == 0 && !prefix))
                return -EINVAL;
        o = json_object_new();
        set_key(o, key, key_size, prefix);
        return txn_add_op(t, branch, "request_range", o);
}

int etcd_txn_new_create_if_absent(const void *key, size_t key_size, const void *value, size_t value_size,
                                  int64_t lease, EtcdTxn **ret) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        int r;

        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, key, key_size, ETCD_COMPARE_CREATE, ETCD_COMPARE_EQUAL, 0);
        if (r >= 0)
                r = etcd_txn_put(t, ETCD_TXN_SUCCESS, key, key_size, value, value_size, lease);
        if (r >= 0)
                r = etcd_txn_range(t, ETCD_TXN_FAILURE, key, key_size, false);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

int etcd_txn_new_delete_if_mod_revision(const void *key, size_t key_size, int64_t mod_revision, EtcdTxn **ret) {
        _cleanup_(etcd_txn_freep) EtcdTxn *t = NULL;
        int r;

        if (mod_revision <= 0)
                return -EINVAL;
        r = etcd_txn_new(&t);
        if (r >= 0)
                r = etcd_txn_compare(t, key, key_size, ETCD_COMPARE_MOD, ETCD_COMPARE_EQUAL, mod_revision);
        if (r >= 0)
                r = etcd_txn_delete(t, ETCD_TXN_SUCCESS, key, key_size, false);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

int etcd_txn(EtcdClient *c, const EtcdTxn *t, EtcdTxnCallback callback, void *userdata, EtcdCall **ret_call) {
        JsonObject *o;

        if (!t)
                return -EINVAL;

        o = json_object_new();
        json_object_set_array_member(o, "compare", json_array_ref(t->compare));
        json_object_set_array_member(o, "success", json_array_ref(t->success));
        json_object_set_array_member(o, "failure", json_array_ref(t->failure));
        return typed_call(c, "/v3/kv/txn", node_take_object(o), CALL_TXN, (CallCallback) { .txn = callback }, userdata,
                          ret_call);
}

/* ---- watches ---------------------------------------------------------------- */

static EtcdWatch *watch_free(EtcdWatch *w) {
        if (!w)
                return NULL;
        transfer_done_free(&w->transfer);
        etcd_json_splitter_free(w->splitter);
        sd_event_source_unref(w->create_timer);
        g_free(w);
        return NULL;
}

static void watch_detach(EtcdWatch *w) {
        EtcdClient *c = w->transfer.client;

        transfer_detach(&w->transfer);
        transfer_unpark(&w->transfer);
        client_unqueue(c, NULL, w);
        g_queue_delete_link(&c->watches, w->transfer.link);
        w->transfer.link = NULL;
        w->transfer.client = NULL;
        w->create_timer = sd_event_source_disable_unref(w->create_timer);
}

void etcd_watch_cancel(EtcdWatch *w) {
        if (!w || w->in_error_callback)
                return;
        watch_detach(w);
        watch_free(w);
}

static int on_watch_create_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        EtcdWatch *w = userdata;
        g_autofree char *message = NULL;

        if (w->created || w->finished || !w->transfer.attached)
                return 0;

        transfer_detach(&w->transfer);
        message = g_strdup("etcd did not confirm the watch in time");
        transfer_fail_over(&w->transfer, -ETIMEDOUT, message);
        return 0;
}

static void watch_handle_message(EtcdWatch *w, JsonNode *message) {
        EtcdClient *c = w->transfer.client;
        g_autoptr(GPtrArray) events = NULL;
        char *text = NULL;
        int64_t revision;
        bool created;
        int r;

        r = etcd_parse_watch_message(message, &events, &created, &revision, &text);
        if (r < 0 && !w->created && c->user && !w->transfer.reauthenticated && is_token_error(text)) {
                /* Refused before it was created: its token was. */
                w->token_refused = true;
                g_free(text);
                return;
        }
        if (r < 0) {
                watch_finish(w, r, text);
                return;
        }

        if (created && !w->created) {
                Pending *p = g_new0(Pending, 1);

                w->created = true;
                c->preferred = w->transfer.endpoint;
                (void) sd_event_source_set_enabled(w->create_timer, SD_EVENT_OFF);
                p->kind = PENDING_WATCH_CREATED;
                p->watch = w;
                p->revision = revision;
                client_queue(c, p);
        }

        for (size_t i = 0; i < events->len; i++) {
                Pending *p = g_new0(Pending, 1);

                p->kind = PENDING_WATCH_EVENT;
                p->watch = w;
                p->event = TAKE_PTR(events->pdata[i]); /* event_free(NULL) is a no-op */
                client_queue(c, p);
        }
}

static size_t on_write_watch(char *data, size_t size, size_t nmemb, void *userdata) {
        EtcdWatch *w = userdata;
        g_autoptr(GPtrArray) messages = NULL;
        size_t n = size * nmemb;
        char *text = NULL;
        long status = 0;
        int r;

        if (w->finished || w->token_refused)
                return 0;

        (void) curl_easy_getinfo(w->transfer.easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200)
                /* An error reply, judged when it is complete. */
                return on_write_reply(data, size, nmemb, &w->transfer);

        messages = g_ptr_array_new_with_free_func((GDestroyNotify) json_node_unref);
        r = etcd_json_splitter_feed(w->splitter, data, n, messages, &text);
        for (size_t i = 0; i < messages->len && !w->finished && !w->token_refused; i++)
                watch_handle_message(w, messages->pdata[i]);
        if (w->finished || w->token_refused) {
                g_free(text);
                return 0; /* ends the transfer */
        }
        if (r < 0) {
                watch_finish(w, r, text);
                return 0;
        }
        return n;
}

int etcd_watch(EtcdClient *c, const void *key, size_t key_size, const EtcdWatchOptions *options,
               const EtcdWatchCallbacks *callbacks, void *userdata, EtcdWatch **ret) {
        static const EtcdWatchOptions defaults = {};
        g_autoptr(JsonNode) request = NULL;
        JsonObject *o, *create;
        EtcdWatch *w;
        int r;

        if (!options)
                options = &defaults;
        if (!c || !callbacks || !callbacks->error || !ret || (!key && key_size > 0) ||
            (key_size == 0 && !options->prefix) || options->start_revision < 0)
                return -EINVAL;

        create = json_object_new();
        set_key(create, key, key_size, options->prefix);
        if (options->start_revision > 0)
                set_int64(create, "start_revision", options->start_revision);
        if (options->prev_kv)
                json_object_set_boolean_member(create, "prev_kv", true);
        if (options->deletes_only) {
                JsonArray *filters = json_array_new();

                json_array_add_string_element(filters, "NOPUT");
                json_object_set_array_member(create, "filters", filters);
        }
        o = json_object_new();
        json_object_set_object_member(o, "create_request", create);
        request = node_take_object(o);

        w = g_new0(EtcdWatch, 1);
        w->callbacks = *callbacks;
        w->userdata = userdata;
        r = transfer_init(&w->transfer, TRANSFER_WATCH, c, "/v3/watch", node_to_body(request));
        if (r >= 0)
                r = transfer_start(&w->transfer);
        if (r < 0) {
                transfer_detach(&w->transfer);
                transfer_unpark(&w->transfer);
                watch_free(w);
                return r;
        }

        g_queue_push_tail(&c->watches, w);
        w->transfer.link = c->watches.tail;
        *ret = w;
        return 0;
}

/* ---- the client ------------------------------------------------------------- */

/* One callback per loop iteration: after it returns nothing here touches
 * the client, which the callback may have freed. */
static int on_dispatch(sd_event_source *s, void *userdata) {
        EtcdClient *c = userdata;
        Pending *p = g_queue_pop_head(&c->pending);
        EtcdWatch *w;

        if (g_queue_is_empty(&c->pending))
                (void) sd_event_source_set_enabled(s, SD_EVENT_OFF);
        if (!p)
                return 0;

        switch (p->kind) {
        case PENDING_CALL_DONE: {
                EtcdCall *call = p->call;

                pending_free(p);
                call_detach(call);
                call->in_callback = true;
                call_invoke(call);
                call_free(call);
                return 0;
        }

        case PENDING_WATCH_CREATED:
                w = p->watch;
                if (w->callbacks.created)
                        w->callbacks.created(w, p->revision, w->userdata);
                break;

        case PENDING_WATCH_EVENT:
                w = p->watch;
                if (w->callbacks.event)
                        w->callbacks.event(w, p->event, w->userdata);
                break;

        case PENDING_WATCH_ERROR:
                w = p->watch;
                watch_detach(w);
                w->in_error_callback = true;
                w->callbacks.error(w, p->error, p->message, w->userdata);
                watch_free(w);
                break;
        }

        pending_free(p);
        return 0;
}

static void socket_source_free(void *p) {
        sd_event_source_disable_unref(p);
}

static int parse_endpoint(const char *s, char **ret) {
        CURLU *u = curl_url();
        char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL, *fragment = NULL,
             *user = NULL;
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, s, 0) != CURLUE_OK)
                goto finish;

        (void) curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
        (void) curl_url_get(u, CURLUPART_HOST, &host, 0);
        (void) curl_url_get(u, CURLUPART_PORT, &port, 0);
        (void) curl_url_get(u, CURLUPART_PATH, &path, 0);
        (void) curl_url_get(u, CURLUPART_QUERY, &query, 0);
        (void) curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
        (void) curl_url_get(u, CURLUPART_USER, &user, 0);

        if (!scheme || !(streq(scheme, "http") || streq(scheme, "https")) || !host || !*host || query || fragment ||
            user || (path && !streq(path, "") && !streq(path, "/")))
                goto finish;
        /* The URL as given, but for a trailing slash: paths are appended. */
        if (g_ascii_strncasecmp(s, scheme, strlen(scheme)) != 0 || !g_str_has_prefix(s + strlen(scheme), "://") ||
            s[strlen(scheme) + 3] == '/')
                goto finish;

        *ret = g_strndup(s, strlen(s) - (g_str_has_suffix(s, "/") ? 1 : 0));
        r = 0;

finish:
        curl_free(scheme);
        curl_free(host);
        curl_free(port);
        curl_free(path);
        curl_free(query);
        curl_free(fragment);
        curl_free(user);
        curl_url_cleanup(u);
        return r;
}

int etcd_client_new(sd_event *event, char * const *endpoints, uint64_t call_timeout_usec, EtcdClient **ret) {
        _cleanup_(etcd_client_freep) EtcdClient *c = NULL;
        static gsize curl_initialized = 0;
        size_t n;
        int r;

        if (!event || !endpoints || !endpoints[0] || !ret)
                return -EINVAL;

        if (g_once_init_enter(&curl_initialized)) {
                CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);

                g_once_init_leave(&curl_initialized, code == CURLE_OK ? 1 : 2);
        }
        if (curl_initialized != 1)
                return -ENOMEM;

        c = g_new0(EtcdClient, 1);
        c->event = sd_event_ref(event);
        c->call_timeout_usec = call_timeout_usec > 0 ? call_timeout_usec : ETCD_DEFAULT_CALL_TIMEOUT_USEC;
        c->sockets = g_hash_table_new_full(NULL, NULL, NULL, socket_source_free);
        g_queue_init(&c->auth_waiting);
        g_queue_init(&c->calls);
        g_queue_init(&c->watches);
        g_queue_init(&c->pending);

        n = g_strv_length((char **) endpoints);
        c->endpoints = g_new0(char *, n + 1);
        for (size_t i = 0; i < n; i++) {
                r = parse_endpoint(endpoints[i], &c->endpoints[i]);
                if (r < 0)
                        return r;
        }
        c->n_endpoints = n;

        r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, 0, USEC_PER_MSEC, on_curl_timer, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->timer, "etcd-curl-timer");

        r = sd_event_add_defer(event, &c->dispatch, on_dispatch, c);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(c->dispatch, SD_EVENT_OFF);
        (void) sd_event_source_set_description(c->dispatch, "etcd-dispatch");

        c->multi = curl_multi_init();
        if (!c->multi)
                return -ENOMEM;
        if (curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer_change) != CURLM_OK ||
            curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c) != CURLM_OK)
                return -ENOMEM;

        *ret = TAKE_PTR(c);
        return 0;
}

EtcdClient *etcd_client_free(EtcdClient *c) {
        EtcdCall *call;
        EtcdWatch *w;
        Pending *p;

        if (!c)
                return NULL;

        while ((p = g_queue_pop_head(&c->pending)))
                pending_free(p);
        while ((call = g_queue_peek_head(&c->calls))) {
                call_detach(call);
                call_free(call);
        }
        while ((w = g_queue_peek_head(&c->watches))) {
                watch_detach(w);
                watch_free(w);
        }

        if (c->multi)
                curl_multi_cleanup(c->multi); /* closes the cached connections */
        g_hash_table_destroy(c->sockets);
        sd_event_source_disable_unref(c->timer);
        sd_event_source_disable_unref(c->dispatch);
        sd_event_unref(c->event);
        g_strfreev(c->endpoints);
        g_free(c->ca_file);
        g_free(c->cert_file);
        g_free(c->key_file);
        g_free(c->user);
        erase_free(c->password);
        erase_free(c->token);
        g_free(c);
        return NULL;
}

int etcd_client_set_tls(EtcdClient *c, const EtcdTlsOptions *tls) {
        const EtcdTlsOptions none = {};

        if (!c)
                return -EINVAL;
        if (!tls)
                tls = &none;
        /* A certificate is of no use without its key, nor the other way. */
        if (!tls->cert_file != !tls->key_file)
                return -EINVAL;

        g_free(c->ca_file);
        c->ca_file = g_strdup(tls->ca_file);
        g_free(c->cert_file);
        c->cert_file = g_strdup(tls->cert_file);
        g_free(c->key_file);
        c->key_file = g_strdup(tls->key_file);
        return 0;
}

int etcd_client_set_auth(EtcdClient *c, const char *user, const char *password) {
        if (!c || !user != !password || (user && !*user))
                return -EINVAL;

        g_free(c->user);
        c->user = g_strdup(user);
        erase_free(c->password);
        c->password = g_strdup(password);
        /* A token of the old name is no good: the next start authenticates. */
        erase_free(c->token);
        c->token = NULL;
        c->authenticated = false;
        c->token_generation++;
        return 0;
}

unsigned etcd_client_get_n_authentications(const EtcdClient *c) {
        return c->n_authentications;
}

const char *etcd_client_get_endpoint(const EtcdClient *c) {
        return c->endpoints[c->preferred];
}
