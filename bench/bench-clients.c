/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <systemd/sd-bus.h>

#include "bench-clients.h"
#include "bench-util.h"
#include "lockbus-names.h"

int bench_client_fail(BenchClient *c, int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vsnprintf(c->error, sizeof(c->error), format, ap);
        va_end(ap);
        return r < 0 ? r : -EIO;
}

/* --- lockbus (and the Ping floor) ------------------------------------------ */

typedef struct LockbusState {
        lockbus *lockbus;
        sd_bus *bus;                    /* borrowed from lockbus */
        lockbus_options options;
        char resource[64];
} LockbusState;

static int lockbus_setup(BenchClient *c) {
        const BenchCase *bc = c->bench_case;
        LockbusState *s;
        const char *unique;
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        c->state = s;

        /* liblockbus picks the path: the direct socket if it is given, else
         * the bus. */
        if (bc->direct && !c->targets->direct_socket)
                return bench_client_fail(c, -EINVAL, "No direct socket given (--direct-socket=)");
        if (bc->etcd_backend && !c->targets->etcd_bus)
                return bench_client_fail(c, -EINVAL, "No bus of the etcd backend given (--etcd-bus=)");
        if (setenv("LOCKBUS_DIRECT_SOCKET", bc->direct ? c->targets->direct_socket : "", 1) < 0)
                return -errno;

        if (bc->etcd_backend) {
                /* The other bus, for this connection only (a paired case
                 * connects in the same process, to the main bus). */
                const char *e = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                char *saved = e ? strdup(e) : NULL;

                if (e && !saved)
                        return -ENOMEM;
                if (setenv("DBUS_SYSTEM_BUS_ADDRESS", c->targets->etcd_bus, 1) < 0) {
                        free(saved);
                        return -errno;
                }
                r = lockbus_open_system(&s->lockbus);
                if (saved)
                        (void) setenv("DBUS_SYSTEM_BUS_ADDRESS", saved, 1);
                else
                        (void) unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
                free(saved);
        } else
                r = lockbus_open_system(&s->lockbus);
        if (r < 0)
                return bench_client_fail(c, r, "Failed to connect to lockbusd%s: %s",
                                         bc->etcd_backend ? " (etcd backend)" : "", strerror(-r));
        s->bus = lockbus_get_bus(s->lockbus);
        if ((sd_bus_is_bus_client(s->bus) > 0) == bc->direct)
                return bench_client_fail(c, -EPROTO, "liblockbus connected %s, not %s",
                                         bc->direct ? "through the bus" : "directly",
                                         bc->direct ? "directly" : "through the bus");
        /* Connected and authenticated (Hello answered) before the clock runs. */
        if (!bc->direct) {
                r = sd_bus_get_unique_name(s->bus, &unique);
                if (r < 0)
                        return bench_client_fail(c, r, "Failed to finish connecting to the bus: %s", strerror(-r));
        }

        s->options = (lockbus_options) {
                .mode = bc->mode,
                .scope = bc->scope,
                .timeout_usec = bc->timeout_usec,
        };
        if (bc->same_resource)
                snprintf(s->resource, sizeof(s->resource), "bench/%s", bc->name);
        else
                snprintf(s->resource, sizeof(s->resource), "bench/%s/%u", bc->name, c->index);

        /* A persistent hold left by an interrupted earlier run would make
         * every Acquire fail; clear ours (NotLocked is the usual answer). */
        if (bc->scope == LOCKBUS_SCOPE_PERSISTENT)
                (void) lockbus_unlock(s->lockbus, s->resource);
        return 0;
}

static int lockbus_cycle(BenchClient *c) {
        const BenchCase *bc = c->bench_case;
        LockbusState *s = c->state;
        int r;

        r = lockbus_lock(s->lockbus, s->resource, &s->options, NULL);
        if (r < 0)
                return bench_client_fail(c, r, "Acquire('%s') failed%s: %s", s->resource,
                                         bc->unlock_nowait ? " (after an Unlock not waited for)" : "",
                                         lockbus_last_error_message(s->lockbus) ?: strerror(-r));

        /* Not waiting for the answer: the calls of one connection are served
         * in order, so the next Acquire finds the hold released (or fails
         * naming us, if the Unlock was refused). */
        if (bc->unlock_nowait) {
                r = lockbus_unlock_nowait(s->lockbus, s->resource);
                if (r < 0)
                        return bench_client_fail(c, r, "Failed to send Unlock('%s'): %s", s->resource, strerror(-r));
                return 0;
        }

        r = lockbus_unlock(s->lockbus, s->resource);
        if (r < 0)
                return bench_client_fail(c, r, "Unlock('%s') failed: %s", s->resource,
                                         lockbus_last_error_message(s->lockbus) ?: strerror(-r));
        return 0;
}

static int ping_op(BenchClient *c) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        LockbusState *s = c->state;
        int r;

        /* A direct connection has no bus to route by name. */
        r = sd_bus_call_method(s->bus, c->bench_case->direct ? NULL : LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                               "org.freedesktop.DBus.Peer", "Ping", &error, NULL, NULL);
        if (r < 0)
                return bench_client_fail(c, r, "Ping failed: %s", error.message ?: strerror(-r));
        return 0;
}

static void lockbus_teardown(BenchClient *c) {
        const BenchCase *bc = c->bench_case;
        LockbusState *s = c->state;

        if (!s)
                return;
        /* Leave nothing held, outside the measured window: a persistent hold
         * outlives the connection (a cycle may have failed between its
         * Acquire and its Unlock), and an Unlock not waited for is known to be
         * done once a call after it is answered. NotLocked (-ENOENT) is the
         * usual answer. */
        if (s->lockbus && s->resource[0] && (bc->unlock_nowait || bc->scope == LOCKBUS_SCOPE_PERSISTENT))
                (void) lockbus_unlock(s->lockbus, s->resource);
        lockbus_unref(s->lockbus);
        free(s);
        c->state = NULL;
}

/* --- flock(2) ---------------------------------------------------------------- */

static int flock_setup(BenchClient *c) {
        char path[4096];
        int *fd;

        fd = malloc(sizeof(int));
        if (!fd)
                return -ENOMEM;
        c->state = fd;
        snprintf(path, sizeof(path), "%s/flock-%u", c->targets->flock_directory, c->index);
        *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (*fd < 0)
                return bench_client_fail(c, -errno, "Failed to open %s: %m", path);
        return 0;
}

static int flock_cycle(BenchClient *c) {
        int fd = *(int *) c->state;

        if (flock(fd, LOCK_EX) < 0 || flock(fd, LOCK_UN) < 0)
                return bench_client_fail(c, -errno, "flock() failed: %m");
        return 0;
}

static void flock_teardown(BenchClient *c) {
        int *fd = c->state;

        if (!fd)
                return;
        if (*fd >= 0)
                close(*fd);
        free(fd);
        c->state = NULL;
}

/* --- Redis: SET key val NX PX 30000, then DEL key ------------------------------ */

typedef struct RedisState {
        redisContext *context;
        char key[64];
        bool del_pending;               /* redis-pipelined: the DEL of the last cycle is not sent yet */
} RedisState;

static int redis_setup(BenchClient *c) {
        RedisState *s;

        if (!c->targets->redis_socket)
                return bench_client_fail(c, -EINVAL, "No Redis socket given (--redis-socket=)");
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        c->state = s;
        s->context = redisConnectUnix(c->targets->redis_socket);
        if (!s->context || s->context->err)
                return bench_client_fail(c, -ECONNREFUSED, "Failed to connect to Redis at %s: %s",
                                         c->targets->redis_socket, s->context ? s->context->errstr : "out of memory");
        snprintf(s->key, sizeof(s->key), "bench:%u", c->index);
        return 0;
}

static int redis_cycle(BenchClient *c) {
        RedisState *s = c->state;
        redisReply *reply;
        bool ok;

        reply = redisCommand(s->context, "SET %s %u NX PX 30000", s->key, c->index);
        ok = reply && reply->type == REDIS_REPLY_STATUS && streq(reply->str, "OK");
        if (reply)
                freeReplyObject(reply);
        if (!ok)
                return bench_client_fail(c, -EIO, "SET %s NX failed: %s", s->key,
                                         s->context->err ? s->context->errstr : "not OK");

        reply = redisCommand(s->context, "DEL %s", s->key);
        ok = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
        if (reply)
                freeReplyObject(reply);
        if (!ok)
                return bench_client_fail(c, -EIO, "DEL %s failed: %s", s->key,
                                         s->context->err ? s->context->errstr : "not 1");
        return 0;
}

/* --- Redis, pipelined: the DEL of one cycle goes out with the SET NX of the
 *     next (one write, both replies read): one round trip per cycle ------------ */

static int redis_pipelined_setup(BenchClient *c) {
        RedisState *s;
        redisReply *reply;
        int r;

        r = redis_setup(c);
        if (r < 0)
                return r;
        s = c->state;
        /* A key of its own (a pair with "redis" must not share one), and no
         * leftover of an interrupted client. */
        snprintf(s->key, sizeof(s->key), "bench:pipelined:%u", c->index);
        reply = redisCommand(s->context, "DEL %s", s->key);
        if (!reply)
                return bench_client_fail(c, -EIO, "DEL %s failed: %s", s->key, s->context->errstr);
        freeReplyObject(reply);
        return 0;
}

static int redis_pipelined_cycle(BenchClient *c) {
        RedisState *s = c->state;
        redisReply *reply = NULL;
        bool ok;

        /* The previous cycle's release, not waited for then; Redis serves the
         * commands of a connection in order, so the SET after it finds the
         * key gone. */
        if (s->del_pending &&
            redisAppendCommand(s->context, "DEL %s", s->key) != REDIS_OK)
                return bench_client_fail(c, -EIO, "DEL %s: %s", s->key, s->context->errstr);
        if (redisAppendCommand(s->context, "SET %s %u NX PX 30000", s->key, c->index) != REDIS_OK)
                return bench_client_fail(c, -EIO, "SET %s NX: %s", s->key, s->context->errstr);

        if (s->del_pending) {
                s->del_pending = false;
                if (redisGetReply(s->context, (void **) &reply) != REDIS_OK)
                        reply = NULL;
                ok = reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
                if (reply)
                        freeReplyObject(reply);
                if (!ok)
                        /* The SET's reply is still unread: this connection
                         * is done for (the client stops at the error). */
                        return bench_client_fail(c, -EIO, "DEL %s (pipelined) failed: %s", s->key,
                                                 s->context->err ? s->context->errstr : "not 1");
        }

        if (redisGetReply(s->context, (void **) &reply) != REDIS_OK)
                reply = NULL;
        ok = reply && reply->type == REDIS_REPLY_STATUS && streq(reply->str, "OK");
        if (reply)
                freeReplyObject(reply);
        if (!ok)
                return bench_client_fail(c, -EIO, "SET %s NX (pipelined) failed: %s", s->key,
                                         s->context->err ? s->context->errstr : "not OK");
        s->del_pending = true;
        return 0;
}

static void redis_teardown(BenchClient *c) {
        RedisState *s = c->state;

        if (!s)
                return;
        /* redis-pipelined: the last cycle's release, waited for (outside the
         * measured window). */
        if (s->context && !s->context->err && s->del_pending) {
                redisReply *reply = redisCommand(s->context, "DEL %s", s->key);

                if (reply)
                        freeReplyObject(reply);
        }
        if (s->context)
                redisFree(s->context);
        free(s);
        c->state = NULL;
}

/* --- PostgreSQL: pg_advisory_lock + pg_advisory_unlock (prepared) -------------- */

typedef struct PostgresState {
        PGconn *conn;
        char key[32];
} PostgresState;

static int postgres_setup(BenchClient *c) {
        PostgresState *s;
        PGresult *res;
        bool ok;

        if (!c->targets->postgres_conninfo)
                return bench_client_fail(c, -EINVAL, "No PostgreSQL connection given (--postgres=)");
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        c->state = s;
        s->conn = PQconnectdb(c->targets->postgres_conninfo);
        if (!s->conn || PQstatus(s->conn) != CONNECTION_OK)
                return bench_client_fail(c, -ECONNREFUSED, "Failed to connect to PostgreSQL: %s",
                                         s->conn ? PQerrorMessage(s->conn) : "out of memory");
        snprintf(s->key, sizeof(s->key), "%u", 424200U + c->index);

        res = PQprepare(s->conn, "lock", "SELECT pg_advisory_lock($1::bigint)", 1, NULL);
        ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (ok) {
                res = PQprepare(s->conn, "unlock", "SELECT pg_advisory_unlock($1::bigint)", 1, NULL);
                ok = PQresultStatus(res) == PGRES_COMMAND_OK;
                PQclear(res);
        }
        if (!ok)
                return bench_client_fail(c, -EIO, "Failed to prepare: %s", PQerrorMessage(s->conn));
        return 0;
}

static int postgres_cycle(BenchClient *c) {
        PostgresState *s = c->state;
        const char *params[1] = { s->key };
        PGresult *res;
        bool ok;

        res = PQexecPrepared(s->conn, "lock", 1, params, NULL, NULL, 0);
        ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        PQclear(res);
        if (!ok)
                return bench_client_fail(c, -EIO, "pg_advisory_lock failed: %s", PQerrorMessage(s->conn));

        res = PQexecPrepared(s->conn, "unlock", 1, params, NULL, NULL, 0);
        ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && streq(PQgetvalue(res, 0, 0), "t");
        PQclear(res);
        if (!ok)
                return bench_client_fail(c, -EIO, "pg_advisory_unlock failed: %s", PQerrorMessage(s->conn));
        return 0;
}

static void postgres_teardown(BenchClient *c) {
        PostgresState *s = c->state;

        if (!s)
                return;
        if (s->conn)
                PQfinish(s->conn);
        free(s);
        c->state = NULL;
}

/* --- etcd v3 over its JSON gateway: lease grant, txn (create if absent, with
 *     the lease), delete; one kept-alive HTTP/1.1 connection per client ------- */

typedef struct EtcdState {
        CURL *curl;
        struct curl_slist *headers;
        char url[256];
        char key_b64[64];
        char value_b64[64];
        char *body;                     /* the last response */
        size_t body_size;
        size_t body_allocated;
} EtcdState;

static void base64_encode(const char *in, char *out, size_t out_size) {
        static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t n = strlen(in), o = 0;

        for (size_t i = 0; i < n && o + 5 < out_size; i += 3) {
                uint32_t v = (uint32_t) (unsigned char) in[i] << 16;

                if (i + 1 < n)
                        v |= (uint32_t) (unsigned char) in[i + 1] << 8;
                if (i + 2 < n)
                        v |= (unsigned char) in[i + 2];
                out[o++] = table[(v >> 18) & 63];
                out[o++] = table[(v >> 12) & 63];
                out[o++] = i + 1 < n ? table[(v >> 6) & 63] : '=';
                out[o++] = i + 2 < n ? table[v & 63] : '=';
        }
        out[o] = '\0';
}

static size_t etcd_on_data(char *data, size_t size, size_t n, void *userdata) {
        EtcdState *s = userdata;
        size_t len = size * n;

        if (s->body_size + len + 1 > s->body_allocated) {
                size_t want = (s->body_size + len + 1) * 2;
                char *p = realloc(s->body, want);

                if (!p)
                        return 0;
                s->body = p;
                s->body_allocated = want;
        }
        memcpy(s->body + s->body_size, data, len);
        s->body_size += len;
        s->body[s->body_size] = '\0';
        return len;
}

/* POSTs a JSON body to the gateway; the answer is in s->body. */
static int etcd_post(BenchClient *c, const char *path, const char *json) {
        EtcdState *s = c->state;
        long status = 0;
        CURLcode cr;

        snprintf(s->url, sizeof(s->url), "%s%s", c->targets->etcd_url, path);
        s->body_size = 0;
        if (s->body)
                s->body[0] = '\0';
        curl_easy_setopt(s->curl, CURLOPT_URL, s->url);
        curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, json);
        cr = curl_easy_perform(s->curl);
        if (cr != CURLE_OK)
                return bench_client_fail(c, -EIO, "POST %s failed: %s", s->url, curl_easy_strerror(cr));
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200)
                return bench_client_fail(c, -EIO, "POST %s: HTTP %ld: %.160s", s->url, status, strempty(s->body));
        return 0;
}

static int etcd_setup(BenchClient *c) {
        EtcdState *s;
        char key[64];

        if (!c->targets->etcd_url)
                return bench_client_fail(c, -EINVAL, "No etcd URL given (--etcd-url=)");
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        c->state = s;
        s->curl = curl_easy_init();
        if (!s->curl)
                return bench_client_fail(c, -ENOMEM, "curl_easy_init() failed");
        s->headers = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, s->headers);
        curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, etcd_on_data);
        curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, s);
        curl_easy_setopt(s->curl, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s->curl, CURLOPT_TIMEOUT, 30L);

        snprintf(key, sizeof(key), "bench/lock/%u", c->index);
        base64_encode(key, s->key_b64, sizeof(s->key_b64));
        base64_encode("held", s->value_b64, sizeof(s->value_b64));
        /* Leftovers of an interrupted run. */
        char json[256];
        snprintf(json, sizeof(json), "{\"key\":\"%s\"}", s->key_b64);
        return etcd_post(c, "/v3/kv/deleterange", json);
}

static int etcd_cycle(BenchClient *c) {
        EtcdState *s = c->state;
        char json[512], lease[32];
        const char *p;
        size_t n;
        int r;

        r = etcd_post(c, "/v3/lease/grant", "{\"TTL\":10}");
        if (r < 0)
                return r;
        p = strstr(strempty(s->body), "\"ID\":\"");
        if (!p)
                return bench_client_fail(c, -EBADMSG, "lease grant: no ID in %.160s", strempty(s->body));
        p += 6;
        n = strspn(p, "0123456789");
        if (n == 0 || n >= sizeof(lease))
                return bench_client_fail(c, -EBADMSG, "lease grant: bad ID in %.160s", s->body);
        memcpy(lease, p, n);
        lease[n] = '\0';

        snprintf(json, sizeof(json),
                 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
                 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%s\"}}]}",
                 s->key_b64, s->key_b64, s->value_b64, lease);
        r = etcd_post(c, "/v3/kv/txn", json);
        if (r < 0)
                return r;
        if (!strstr(strempty(s->body), "\"succeeded\":true"))
                return bench_client_fail(c, -EBUSY, "txn did not take the lock: %.160s", strempty(s->body));

        snprintf(json, sizeof(json), "{\"key\":\"%s\"}", s->key_b64);
        r = etcd_post(c, "/v3/kv/deleterange", json);
        if (r < 0)
                return r;
        if (!strstr(strempty(s->body), "\"deleted\":\"1\""))
                return bench_client_fail(c, -EIO, "deleterange deleted nothing: %.160s", strempty(s->body));
        return 0;
}

static void etcd_teardown(BenchClient *c) {
        EtcdState *s = c->state;

        if (!s)
                return;
        if (s->curl)
                curl_easy_cleanup(s->curl);
        curl_slist_free_all(s->headers);
        free(s->body);
        free(s);
        c->state = NULL;
}

/* --- The table --------------------------------------------------------------- */

#define LOCKBUS_CASE(n, d, m, sc, same, t, dir, nowait)                         \
        { .name = n, .description = d, .is_lockbus = true, .direct = dir,      \
          .setup = lockbus_setup, .op = lockbus_cycle, .teardown = lockbus_teardown, \
          .mode = m, .scope = sc, .same_resource = same, .timeout_usec = t,    \
          .unlock_nowait = nowait }

#define ETCD_CASE(n, d, sc, nowait)                                             \
        { .name = n, .description = d, .is_lockbus = true, .etcd_backend = true, \
          .setup = lockbus_setup, .op = lockbus_cycle, .teardown = lockbus_teardown, \
          .mode = LOCKBUS_MODE_EXCLUSIVE, .scope = sc, .unlock_nowait = nowait }

static const BenchCase cases[] = {
        { .name = "ping", .description = "floor: org.freedesktop.DBus.Peer.Ping to lockbusd (one call)",
          .is_lockbus = true, .setup = lockbus_setup, .op = ping_op, .teardown = lockbus_teardown },
        LOCKBUS_CASE("conn-excl", "Acquire exclusive, scope connection + Unlock, own resource",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_CONNECTION, false, 0, false, false),
        LOCKBUS_CASE("conn-excl-nowait", "conn-excl, the Unlock not waited for (lockbus_unlock_nowait): one round trip",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_CONNECTION, false, 0, false, true),
        LOCKBUS_CASE("conn-shared", "Acquire shared, scope connection + Unlock, own resource",
                     LOCKBUS_MODE_SHARED, LOCKBUS_SCOPE_CONNECTION, false, 0, false, false),
        LOCKBUS_CASE("conn-shared-same", "Acquire shared, scope connection + Unlock, one resource for all",
                     LOCKBUS_MODE_SHARED, LOCKBUS_SCOPE_CONNECTION, true, 0, false, false),
        LOCKBUS_CASE("pers-excl", "Acquire exclusive, scope persistent + Unlock, own resource",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_PERSISTENT, false, 0, false, false),
        LOCKBUS_CASE("pers-excl-nowait", "pers-excl, the Unlock not waited for (lockbus_unlock_nowait): one round trip",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_PERSISTENT, false, 0, false, true),
        LOCKBUS_CASE("pers-shared", "Acquire shared, scope persistent + Unlock, own resource",
                     LOCKBUS_MODE_SHARED, LOCKBUS_SCOPE_PERSISTENT, false, 0, false, false),
        LOCKBUS_CASE("pers-shared-same", "Acquire shared, scope persistent + Unlock, one resource for all",
                     LOCKBUS_MODE_SHARED, LOCKBUS_SCOPE_PERSISTENT, true, 0, false, false),
        LOCKBUS_CASE("contended", "Acquire exclusive, scope connection, waiting for ever + Unlock, one resource for all",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_CONNECTION, true, LOCKBUS_WAIT_FOREVER, false, false),
        { .name = "ping-direct", .description = "floor of the direct path: Peer.Ping to lockbusd on its direct socket",
          .is_lockbus = true, .direct = true, .setup = lockbus_setup, .op = ping_op, .teardown = lockbus_teardown },
        LOCKBUS_CASE("conn-excl-direct", "conn-excl through lockbusd's direct socket (no bus daemon)",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_CONNECTION, false, 0, true, false),
        LOCKBUS_CASE("conn-excl-direct-nowait", "conn-excl-nowait through lockbusd's direct socket",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_CONNECTION, false, 0, true, true),
        LOCKBUS_CASE("pers-excl-direct", "pers-excl through lockbusd's direct socket (no bus daemon)",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_PERSISTENT, false, 0, true, false),
        LOCKBUS_CASE("pers-excl-direct-nowait", "pers-excl-nowait through lockbusd's direct socket",
                     LOCKBUS_MODE_EXCLUSIVE, LOCKBUS_SCOPE_PERSISTENT, false, 0, true, true),
        /* The same cycles on the bus of the lockbusd with --backend=etcd. */
        { .name = "ping-etcd", .description = "floor of the etcd backend's bus: Peer.Ping to that lockbusd (no etcd involved)",
          .is_lockbus = true, .etcd_backend = true, .setup = lockbus_setup, .op = ping_op, .teardown = lockbus_teardown },
        ETCD_CASE("conn-excl-etcd", "conn-excl, lockbusd with --backend=etcd (every lock decided in etcd)",
                  LOCKBUS_SCOPE_CONNECTION, false),
        ETCD_CASE("conn-excl-etcd-nowait", "conn-excl-nowait, lockbusd with --backend=etcd",
                  LOCKBUS_SCOPE_CONNECTION, true),
        ETCD_CASE("pers-excl-etcd", "pers-excl, lockbusd with --backend=etcd (the hold moved off the daemon's lease)",
                  LOCKBUS_SCOPE_PERSISTENT, false),
        { .name = "flock", .description = "flock(2) LOCK_EX + LOCK_UN on an open fd, own file",
          .setup = flock_setup, .op = flock_cycle, .teardown = flock_teardown },
        { .name = "redis", .description = "Redis SET key val NX PX 30000 + DEL key over a Unix socket (hiredis)",
          .setup = redis_setup, .op = redis_cycle, .teardown = redis_teardown },
        { .name = "redis-pipelined", .description = "redis, the DEL not waited for but sent with the next cycle's SET NX: one round trip",
          .setup = redis_pipelined_setup, .op = redis_pipelined_cycle, .teardown = redis_teardown },
        { .name = "postgres", .description = "PostgreSQL pg_advisory_lock + pg_advisory_unlock, prepared, Unix socket (libpq)",
          .setup = postgres_setup, .op = postgres_cycle, .teardown = postgres_teardown },
        { .name = "etcd", .description = "etcd v3 lease grant + txn (create_revision == 0 → put with lease) + deleterange, JSON gateway, kept-alive HTTP (libcurl)",
          .setup = etcd_setup, .op = etcd_cycle, .teardown = etcd_teardown },
};

const BenchCase *bench_case_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                if (streq(cases[i].name, name))
                        return &cases[i];
        return NULL;
}

void bench_cases_list(FILE *f) {
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                fprintf(f, "  %-24s %s\n", cases[i].name, cases[i].description);
}
