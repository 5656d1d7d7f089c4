/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* An asynchronous etcd v3 client for lockbusd's single-threaded sd-event
 * loop: HTTP/1.1 POSTs of JSON to etcd's gRPC gateway ("/v3/kv/range", …),
 * driven by libcurl's multi socket interface on sd-event io and time
 * sources. Nothing here blocks and nothing knows about locks.
 *
 * Calls. etcd_call() posts one JSON request to one gateway path; the typed
 * helpers below build the request and decode the reply. Every callback
 * runs from the event loop (a defer source), never from inside the function
 * that started the call. A call object is valid until its callback returns
 * (it is freed then) or until etcd_call_cancel(); the callback is called
 * exactly once unless the call is cancelled or the client freed.
 *
 * Failover. A call starts at the endpoint that answered last and, on a
 * transport failure (connection refused or reset, timeout, HTTP 5xx without
 * an etcd error, or etcd's UNAVAILABLE: "no leader", "request timed out"),
 * tries the next endpoint, each at most once. It has call_timeout_usec in
 * all: each attempt gets what is left divided by the endpoints not tried
 * yet, so one hung member cannot eat the whole budget. When every endpoint
 * failed the error is that of the attempts if they all agree
 * (-ECONNREFUSED, -ETIMEDOUT, -ECONNRESET), else -EHOSTUNREACH, with a
 * message naming each endpoint tried and why it failed. A request that
 * timed out or lost its connection may still have been applied by that
 * member, and the next one applies it again: requests must tolerate a
 * repeat (compare on create_revision, recognise one's own lease), a
 * repeated lease grant leaves a spare lease that expires with its TTL.
 *
 * etcd errors. A reply carrying a gRPC error is reported at once (no
 * failover) with etcd's message and this errno:
 *   CANCELLED -ECANCELED, UNKNOWN -EIO, INVALID_ARGUMENT -EINVAL,
 *   DEADLINE_EXCEEDED -ETIME, NOT_FOUND -ENOENT (lease not found),
 *   ALREADY_EXISTS -EEXIST, PERMISSION_DENIED and UNAUTHENTICATED -EACCES,
 *   RESOURCE_EXHAUSTED -ENOSPC (no space alarm, too many requests),
 *   FAILED_PRECONDITION -ESTALE (the cluster state the request assumed is
 *   gone: not leader, lease or member exists), ABORTED -EAGAIN,
 *   OUT_OF_RANGE -ERANGE (revision compacted or in the future, TTL too
 *   large), UNIMPLEMENTED -EOPNOTSUPP, INTERNAL and DATA_LOSS -EIO,
 *   any other code -EIO; UNAVAILABLE fails over as above.
 * A reply that is not what etcd sends (not JSON, wrong types, bad base64,
 * missing header, an unexpected HTTP status) is -EBADMSG with the reason;
 * a reply over 64 MiB is -EMSGSIZE.
 *
 * Values. etcd's int64 fields arrive as JSON strings ("revision":"12") and
 * are omitted when zero; both are accepted, as are plain JSON integers.
 * Keys and values are bytes (base64 in the JSON): they are passed as
 * (pointer, size) and returned NUL-terminated for convenience (the NUL is
 * not counted; the bytes may contain NULs themselves).
 *
 * Watches. etcd_watch() holds one HTTP response open on "/v3/watch": the
 * gateway sends one JSON object per message, each followed by "\n", in
 * HTTP chunks ({"result":{...}}, and a final {"error":{...}} without the
 * newline when the stream dies). Until etcd confirms the watch ("created")
 * it fails over like a call; afterwards every PUT and DELETE is reported in
 * revision order and the first of cancellation by etcd, compaction
 * (-ERANGE), a stream error or the loss of the connection (-ECONNRESET)
 * ends the watch with one error callback. The watch is then freed; it is
 * never resumed here: the caller starts a new one from the revision after
 * the last event it saw. A connection that goes silent is noticed only by
 * TCP keepalive.
 *
 * TLS. https:// endpoints are verified (certificate chain and host name,
 * never turned off) against the system's CA store, or only against the CA
 * bundle etcd_client_set_tls() names; that also sets the client
 * certificate that etcd's --client-cert-auth asks for (as etcdctl's
 * --cacert, --cert, --key). A TLS failure (an untrusted or misnamed server
 * certificate, a client certificate refused or missing) is a transport
 * failure of that endpoint: it fails over like one, and the message names
 * the endpoint and libcurl's reason. Its errno is -EPROTO, or -ECONNRESET
 * when the member's refusal comes as an alert after the handshake (etcd's
 * answer to a missing client certificate).
 *
 * Authentication. With a user and password (etcd_client_set_auth()) the
 * client gets a token from "/v3/auth/authenticate" before its first call
 * or watch starts, and sends it in the "Authorization" header of each
 * request (a watch needs it only to be created). Calls and watches started
 * meanwhile wait for that one authentication, then start with their whole
 * call_timeout_usec; the authentication fails over like a call. When etcd
 * refuses a token (it expired: --auth-token-ttl; it predates a change of
 * users, roles or passwords; or none was sent as authentication was turned
 * on later), the first request to see that token refused authenticates
 * again and every request refused retries once with the new token, so one
 * authentication serves a burst of refusals. A simple token is known to
 * every member, so failover keeps it; a member that does not take it is
 * one more refusal. A failed authentication fails every request waiting
 * for it with "Failed to authenticate to etcd as user 'NAME' at ENDPOINT:
 * etcd's reason" (never the password): -EACCES for a wrong user or
 * password, else the errno of the failure as above. When etcd says its
 * authentication is not enabled, requests go on without a token (as
 * etcdctl does).
 *
 * Not here: discovering members beyond the endpoint list, gRPC itself. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-glib/json-glib.h>
#include <systemd/sd-event.h>

#include "macro.h"

#define ETCD_DEFAULT_CALL_TIMEOUT_USEC (5U * 1000U * 1000U)

typedef struct EtcdClient EtcdClient;
typedef struct EtcdCall EtcdCall;
typedef struct EtcdWatch EtcdWatch;
typedef struct EtcdTxn EtcdTxn;

/* endpoints: a NULL-terminated list of at least one "http://host:port" or
 * "https://host:port" URL (no path beyond "/", query, fragment or user);
 * -EINVAL otherwise. call_timeout_usec: the whole budget of a call, 0 for
 * ETCD_DEFAULT_CALL_TIMEOUT_USEC. The client attaches to event (which must
 * outlive it). */
int etcd_client_new(sd_event *event, char * const *endpoints, uint64_t call_timeout_usec, EtcdClient **ret);

/* The files of TLS for https:// endpoints (PEM, read by libcurl at each
 * new connection, so they must stay readable). */
typedef struct EtcdTlsOptions {
        const char *ca_file;            /* the CA bundle to trust instead of the system's store; NULL: that store */
        const char *cert_file;          /* the client certificate; NULL: none */
        const char *key_file;           /* its private key (unencrypted); set with cert_file or not at all */
} EtcdTlsOptions;

/* Copies tls (NULL: as all NULL) for the calls and watches started from
 * now on. -EINVAL if only one of cert_file and key_file is set. The files
 * are not read here: a file that cannot be used fails each call, naming it
 * (the caller checks them at start to say so before anything runs). */
int etcd_client_set_tls(EtcdClient *c, const EtcdTlsOptions *tls);

/* etcd's user/password authentication (etcdctl's --user): both or
 * neither (NULL, NULL: none, the default); -EINVAL otherwise or for an
 * empty user. Copied; the password is never logged nor put in a message.
 * Set it before the first call or watch starts. */
int etcd_client_set_auth(EtcdClient *c, const char *user, const char *password);

/* How many tokens etcd gave this client so far (for tests and logs). */
unsigned etcd_client_get_n_authentications(const EtcdClient *c);

/* Ends every call and watch without calling their callbacks (their
 * pointers are invalid afterwards) and closes the connections. NULL-safe;
 * returns NULL. May be called from any callback of this client. */
EtcdClient *etcd_client_free(EtcdClient *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(EtcdClient *, etcd_client_free);

/* The endpoint the next call starts with (the last one that answered). */
const char *etcd_client_get_endpoint(const EtcdClient *c);

/* ---- the generic call ---------------------------------------------------- */

/* error: 0 or a negative errno as above, then error_message says why (else
 * NULL). reply: etcd's JSON reply on success (borrowed; the {"result": …}
 * wrapper of streaming paths such as "/v3/lease/keepalive" removed), else
 * NULL. */
typedef void (*EtcdCallback)(EtcdCall *call, int error, const char *error_message, JsonNode *reply,
                             void *userdata);

/* Posts request (borrowed, serialised at once) to path (e.g. "/v3/kv/txn").
 * ret_call may be NULL if the call will never be cancelled. Fails only for
 * bad arguments or lack of memory; every other failure goes to callback. */
int etcd_call(EtcdClient *c, const char *path, JsonNode *request, EtcdCallback callback, void *userdata,
              EtcdCall **ret_call);

/* Stops the call; its callback is not called. NULL-safe; a no-op from
 * inside the call's own callback. */
void etcd_call_cancel(EtcdCall *call);

/* ---- typed results ------------------------------------------------------ */

typedef struct EtcdKeyValue {
        char *key;
        size_t key_size;
        char *value;
        size_t value_size;
        int64_t create_revision;
        int64_t mod_revision;
        int64_t version;
        int64_t lease;                  /* 0: none */
} EtcdKeyValue;

typedef struct EtcdRangeResult {
        int64_t revision;               /* the store's revision when served */
        EtcdKeyValue *kvs;
        size_t n_kvs;
        int64_t count;                  /* keys in the range (limit aside) */
        bool more;                      /* limit cut the answer short */
} EtcdRangeResult;

typedef enum EtcdOpType {
        ETCD_OP_RANGE,
        ETCD_OP_PUT,
        ETCD_OP_DELETE,
} EtcdOpType;

typedef struct EtcdOpResult {
        EtcdOpType type;
        EtcdKeyValue *kvs;              /* RANGE: the keys found */
        size_t n_kvs;
        int64_t count;                  /* RANGE: count; DELETE: keys deleted */
} EtcdOpResult;

typedef struct EtcdTxnResult {
        int64_t revision;               /* after the txn (a put: its revision) */
        bool succeeded;                 /* all compares held: success ops ran */
        EtcdOpResult *responses;        /* one per op of the branch that ran */
        size_t n_responses;
} EtcdTxnResult;

/* Results are borrowed: valid during the callback. On error they are NULL
 * or 0. */
typedef void (*EtcdLeaseGrantCallback)(EtcdCall *call, int error, const char *error_message, int64_t lease_id,
                                       int64_t ttl_sec, void *userdata);
typedef void (*EtcdLeaseKeepAliveCallback)(EtcdCall *call, int error, const char *error_message,
                                           int64_t ttl_sec, void *userdata);
/* revision: the store's revision after the request (a put's revision). */
typedef void (*EtcdRevisionCallback)(EtcdCall *call, int error, const char *error_message, int64_t revision,
                                     void *userdata);
typedef void (*EtcdDeleteCallback)(EtcdCall *call, int error, const char *error_message, int64_t revision,
                                   int64_t deleted, void *userdata);
typedef void (*EtcdRangeCallback)(EtcdCall *call, int error, const char *error_message,
                                  const EtcdRangeResult *result, void *userdata);
typedef void (*EtcdTxnCallback)(EtcdCall *call, int error, const char *error_message,
                                const EtcdTxnResult *result, void *userdata);

/* ---- leases ------------------------------------------------------------- */

/* A new lease of ttl_sec (etcd may raise a small TTL to its minimum). */
int etcd_lease_grant(EtcdClient *c, int64_t ttl_sec, EtcdLeaseGrantCallback callback, void *userdata,
                     EtcdCall **ret_call);

/* One keepalive round: the lease's TTL starts again; returns the new TTL.
 * -ENOENT if the lease expired, was revoked or never existed. */
int etcd_lease_keepalive(EtcdClient *c, int64_t lease_id, EtcdLeaseKeepAliveCallback callback, void *userdata,
                         EtcdCall **ret_call);

/* Revokes the lease and deletes its keys. -ENOENT if it does not exist. */
int etcd_lease_revoke(EtcdClient *c, int64_t lease_id, EtcdRevisionCallback callback, void *userdata,
                      EtcdCall **ret_call);

/* ---- keys --------------------------------------------------------------- */

typedef enum EtcdSortTarget {
        ETCD_SORT_KEY,
        ETCD_SORT_VERSION,
        ETCD_SORT_CREATE,
        ETCD_SORT_MOD,
        ETCD_SORT_VALUE,
} EtcdSortTarget;

typedef enum EtcdSortOrder {
        ETCD_SORT_NONE,
        ETCD_SORT_ASCEND,
        ETCD_SORT_DESCEND,
} EtcdSortOrder;

typedef struct EtcdRangeOptions {
        bool prefix;                    /* every key starting with key */
        int64_t revision;               /* read at this revision; 0: latest */
        int64_t limit;                  /* 0: all */
        int64_t max_create_revision;    /* 0: no bound (e.g. a predecessor) */
        EtcdSortTarget sort_target;
        EtcdSortOrder sort_order;
        bool keys_only;
        bool count_only;
} EtcdRangeOptions;

/* options NULL: the one key, latest revision. */
int etcd_range(EtcdClient *c, const void *key, size_t key_size, const EtcdRangeOptions *options,
               EtcdRangeCallback callback, void *userdata, EtcdCall **ret_call);

/* lease 0: none. A lease that does not exist is -ENOENT. */
int etcd_put(EtcdClient *c, const void *key, size_t key_size, const void *value, size_t value_size,
             int64_t lease, EtcdRevisionCallback callback, void *userdata, EtcdCall **ret_call);

int etcd_delete(EtcdClient *c, const void *key, size_t key_size, bool prefix, EtcdDeleteCallback callback,
                void *userdata, EtcdCall **ret_call);

/* ---- transactions ------------------------------------------------------- */

typedef enum EtcdCompareTarget {
        ETCD_COMPARE_VERSION,
        ETCD_COMPARE_CREATE,            /* create_revision; 0: the key does not exist */
        ETCD_COMPARE_MOD,               /* mod_revision */
        ETCD_COMPARE_LEASE,
} EtcdCompareTarget;

typedef enum EtcdCompareResult {
        ETCD_COMPARE_EQUAL,
        ETCD_COMPARE_GREATER,
        ETCD_COMPARE_LESS,
        ETCD_COMPARE_NOT_EQUAL,
} EtcdCompareResult;

typedef enum EtcdTxnBranch {
        ETCD_TXN_SUCCESS,               /* runs if every compare holds */
        ETCD_TXN_FAILURE,               /* runs otherwise */
} EtcdTxnBranch;

/* A txn is built, then started with etcd_txn() (which copies what it
 * needs: the builder may be freed or reused at once). Adding fails only
 * for bad arguments (-EINVAL) or lack of memory. */
int etcd_txn_new(EtcdTxn **ret);
EtcdTxn *etcd_txn_free(EtcdTxn *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(EtcdTxn *, etcd_txn_free);

int etcd_txn_compare(EtcdTxn *t, const void *key, size_t key_size, EtcdCompareTarget target,
                     EtcdCompareResult result, int64_t value);
int etcd_txn_put(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, const void *value,
                 size_t value_size, int64_t lease);
int etcd_txn_delete(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, bool prefix);
int etcd_txn_range(EtcdTxn *t, EtcdTxnBranch branch, const void *key, size_t key_size, bool prefix);

/* The two the backend needs:
 * "create key with value under lease if create_revision(key) == 0, else
 *  get key": succeeded → revision is the key's create revision; else
 *  responses[0].kvs[0] (if n_kvs is 1) is the holder's kv.
 * "delete key if mod_revision(key) == mod_revision": succeeded → deleted. */
int etcd_txn_new_create_if_absent(const void *key, size_t key_size, const void *value, size_t value_size,
                                  int64_t lease, EtcdTxn **ret);
int etcd_txn_new_delete_if_mod_revision(const void *key, size_t key_size, int64_t mod_revision, EtcdTxn **ret);

int etcd_txn(EtcdClient *c, const EtcdTxn *t, EtcdTxnCallback callback, void *userdata, EtcdCall **ret_call);

/* ---- watches ------------------------------------------------------------ */

typedef enum EtcdEventType {
        ETCD_EVENT_PUT,
        ETCD_EVENT_DELETE,
} EtcdEventType;

typedef struct EtcdEvent {
        EtcdEventType type;
        int64_t revision;               /* header revision of its message */
        EtcdKeyValue kv;                /* DELETE: key and mod_revision (the deletion's) */
        const EtcdKeyValue *prev_kv;    /* with prev_kv requested and known, else NULL */
} EtcdEvent;

typedef struct EtcdWatchOptions {
        bool prefix;
        int64_t start_revision;         /* 0: from now on */
        bool prev_kv;
        bool deletes_only;              /* etcd leaves PUT events out (filter NOPUT) */
} EtcdWatchOptions;

/* All borrowed, valid during the callback. created and event may be NULL.
 * created: etcd confirmed the watch; revision: the store's revision then.
 * error: the watch has ended (it is freed when error returns). */
typedef struct EtcdWatchCallbacks {
        void (*created)(EtcdWatch *w, int64_t revision, void *userdata);
        void (*event)(EtcdWatch *w, const EtcdEvent *event, void *userdata);
        void (*error)(EtcdWatch *w, int error, const char *error_message, void *userdata);
} EtcdWatchCallbacks;

/* options NULL: the one key, from now on. callbacks is copied; its error
 * member is required. */
int etcd_watch(EtcdClient *c, const void *key, size_t key_size, const EtcdWatchOptions *options,
               const EtcdWatchCallbacks *callbacks, void *userdata, EtcdWatch **ret);

/* Ends the watch and closes its stream; no callback is called any more.
 * NULL-safe; a no-op from inside the watch's own error callback. */
void etcd_watch_cancel(EtcdWatch *w);

/* ---- the parsers, exposed for tests and fuzzers ------------------------- */

/* Classifies one finished HTTP exchange: 0 and the reply (unwrapped from
 * {"result": …}) in *ret_reply; a negative errno as above and the reason
 * (g_free()) in *ret_message; 1 when the call should fail over (5xx,
 * UNAVAILABLE), with the reason in *ret_message. */
int etcd_parse_reply(long http_status, const void *body, size_t size, JsonNode **ret_reply, char **ret_message);

/* The typed decoders: 0, or -EBADMSG with the reason in *ret_message. The
 * results are freed with the matching _free(). */
int etcd_parse_range_result(JsonNode *reply, EtcdRangeResult **ret, char **ret_message);
EtcdRangeResult *etcd_range_result_free(EtcdRangeResult *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(EtcdRangeResult *, etcd_range_result_free);
int etcd_parse_txn_result(JsonNode *reply, EtcdTxnResult **ret, char **ret_message);
EtcdTxnResult *etcd_txn_result_free(EtcdTxnResult *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(EtcdTxnResult *, etcd_txn_result_free);
int etcd_parse_int64(JsonObject *o, const char *member, int64_t *ret);
int etcd_parse_header_revision(JsonNode *reply, int64_t *ret, char **ret_message);

/* The watch stream: splits bytes as they arrive into top-level JSON
 * objects. feed() appends each complete object to out (JsonNode *, with a
 * free func); -EBADMSG (reason in *ret_message) for anything between
 * objects but whitespace, or an object that does not parse; -EMSGSIZE for
 * one over 64 MiB. is_empty(): no partial object is pending. */
typedef struct EtcdJsonSplitter EtcdJsonSplitter;
EtcdJsonSplitter *etcd_json_splitter_new(void);
EtcdJsonSplitter *etcd_json_splitter_free(EtcdJsonSplitter *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(EtcdJsonSplitter *, etcd_json_splitter_free);
int etcd_json_splitter_feed(EtcdJsonSplitter *s, const void *data, size_t size, GPtrArray *out,
                            char **ret_message);
bool etcd_json_splitter_is_empty(const EtcdJsonSplitter *s);

/* One watch message. Returns 0 with *ret_events (EtcdEvent *, free func
 * set; possibly empty, e.g. a progress notification), *ret_created and
 * *ret_revision set; or the error that ends the watch (-ERANGE compacted,
 * -ECANCELED canceled by etcd, a stream error mapped as above with
 * UNAVAILABLE and CANCELLED as -ECONNRESET, -EBADMSG) with the reason in
 * *ret_message. */
int etcd_parse_watch_message(JsonNode *message, GPtrArray **ret_events, bool *ret_created, int64_t *ret_revision,
                             char **ret_message);

/* The errno for a gRPC status code, as above (UNAVAILABLE: -EHOSTUNREACH). */
int etcd_grpc_code_to_errno(int64_t code);
