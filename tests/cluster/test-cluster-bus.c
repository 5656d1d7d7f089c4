/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode through the bus: two lockbusd on one etcd cluster, one per
 * "host" (cluster-test.h), and the contract of DESIGN.md decided across
 * them: a hold on one host blocks the other and is named with its host,
 * waiters of both hosts are served in arrival order and leave the queue on
 * timeout or disconnect, shared holds mix hosts, TTLs and Refresh are seen
 * across hosts, tokens grow across hosts, Owner/ListLocks/Break work on
 * holds of the other host, re-entry is refused per caller (not per uid
 * across machines), a non-root caller gets the same, and a daemon on etcd
 * still exits on idle and comes back by activation.
 *
 * Nothing sleeps: every wait is for a reply or for keys to appear in etcd
 * (cluster_wait_keys()). */

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "cluster-test.h"

#define OTHER_COMM "lockbus-nobody"

#define WAIT_FOREVER(m) (&(TestAcquireOptions) { .mode = (m), .has_timeout = true, .timeout = UINT64_MAX })
#define NO_WAIT(m) (&(TestAcquireOptions) { .mode = (m) })

static char *locked_on_host_message(const char *resource, uid_t uid, pid_t pid, const char *comm,
                                    const char *host) {
        return g_strdup_printf("Resource '%s' already locked by uid %u (pid %d, %s) on host %s", resource,
                               (unsigned) uid, (int) pid, comm, host);
}

/* NotOwner for a hold of another host names that host, as AlreadyLocked
 * does. */
static char *not_owner_on_host_message(const char *resource, uid_t holder, const char *host, const char *verb,
                                       uid_t caller) {
        return g_strdup_printf("Resource '%s' locked by uid %u on host %s cannot be %s by uid %u", resource,
                               (unsigned) holder, host, verb, (unsigned) caller);
}

/* A lock taken on A blocks B; B's error and Owner name the holder and host A. */
static void test_exclusive_blocks_other_host(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) on_a = NULL, on_b = NULL;
        g_autofree char *mode = NULL, *message = NULL, *sender_a = NULL;
        TestHolder *h;
        uint64_t token, before, after;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        before = test_now_realtime();
        token = test_acquire_ok(f->a.client, "db", &(TestAcquireOptions) { .description = "migration" });
        after = test_now_realtime();

        message = locked_on_host_message("db", geteuid(), getpid(), f->comm, "hostA");
        r = test_acquire(f->b.client, "db", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        r = test_lock(f->b.client, "db", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);
        /* A shared request does not fit either. */
        r = test_acquire(f->b.client, "db", NO_WAIT("shared"), NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* Owner on B: A's hold, its sender qualified with host A. */
        sender_a = cluster_sender(&f->a, f->a.client);
        on_b = test_owner_ok(f->b.client, "db", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(on_b->len, ==, 1);
        h = on_b->pdata[0];
        assert_holder(h, geteuid(), getpid(), f->comm, sender_a, token, "connection");
        g_assert_cmpstr(h->description, ==, "migration");
        g_assert_cmpuint(h->since, >=, before);
        g_assert_cmpuint(h->since, <=, after);
        g_assert_cmpuint(h->expires, ==, 0);

        /* Owner on A: its own bus, the plain unique name. */
        g_clear_pointer(&mode, g_free);
        on_a = test_owner_ok(f->a.client, "db", &mode);
        g_assert_cmpstr(mode, ==, "exclusive");
        g_assert_cmpuint(on_a->len, ==, 1);
        assert_holder(on_a->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(f->a.client), token,
                      "connection");

        /* Each daemon counts its own holds. */
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 1);
        g_assert_cmpuint(test_get_property_u(f->b.client, "LockCount"), ==, 0);

        /* Released on A: free for B. */
        test_unlock_ok(f->a.client, "db");
        g_assert_cmpuint(test_acquire_ok(f->b.client, "db", NULL), >, token);
}

/* Three waiters, on B, A and B in that order, behind a hold on A: each
 * release grants exactly the next one. */
static void test_fifo_across_hosts(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b1 = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a2 = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b3 = NULL;
        g_autoptr(TestCall) w1 = NULL, w2 = NULL, w3 = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *sender_b1 = NULL;
        uint64_t t0, t1, t2, t3;

        CLUSTER_SKIP_WITHOUT_ETCD();
        b1 = test_bus_connect(f->b.bus);
        a2 = test_bus_connect(f->a.bus);
        b3 = test_bus_connect(f->b.bus);

        t0 = test_acquire_ok(f->a.client, "q", NULL);
        cluster_wait_keys(f, "q", 1);

        w1 = test_acquire_async(b1, "q", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "q", 2);
        w2 = test_acquire_async(a2, "q", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "q", 3);
        w3 = test_acquire_async(b3, "q", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "q", 4);

        assert_call_pending(w1);
        assert_call_pending(w2);
        assert_call_pending(w3);
        /* Each daemon counts its own waiters. */
        g_assert_cmpuint(test_get_property_u(f->a.client, "WaiterCount"), ==, 1);
        g_assert_cmpuint(test_get_property_u(f->b.client, "WaiterCount"), ==, 2);

        test_unlock_ok(f->a.client, "q");
        t1 = test_call_wait_token(w1);
        g_assert_cmpuint(t1, >, t0);
        assert_call_pending(w2);
        assert_call_pending(w3);

        /* A sees B's waiter as the holder now. */
        sender_b1 = cluster_sender(&f->b, b1);
        holders = test_owner_ok(f->a.client, "q", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, sender_b1, t1, "connection");

        test_unlock_ok(b1, "q");
        t2 = test_call_wait_token(w2);
        g_assert_cmpuint(t2, >, t1);
        assert_call_pending(w3);

        test_unlock_ok(a2, "q");
        t3 = test_call_wait_token(w3);
        g_assert_cmpuint(t3, >, t2);

        g_assert_cmpuint(test_get_property_u(f->a.client, "WaiterCount"), ==, 0);
        g_assert_cmpuint(test_get_property_u(f->b.client, "WaiterCount"), ==, 0);
        test_unlock_ok(b3, "q");
        cluster_wait_keys(f, "q", 0);
}

/* Shared holds on both hosts at once; an exclusive request waits for
 * both, and a shared one behind it waits too (no writer starvation). */
static void test_shared_both_hosts(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a2 = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b2 = NULL;
        g_autoptr(TestCall) writer = NULL, reader = NULL;
        g_autoptr(GPtrArray) on_a = NULL, on_b = NULL;
        g_autofree char *mode = NULL, *sender_a = NULL, *sender_b = NULL;
        uint64_t ta, tb, tw, tr;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a2 = test_bus_connect(f->a.bus);
        b2 = test_bus_connect(f->b.bus);

        ta = test_acquire_ok(f->a.client, "s", NO_WAIT("shared"));
        tb = test_acquire_ok(f->b.client, "s", NO_WAIT("shared"));
        g_assert_cmpuint(tb, >, ta);

        /* Both hosts see both holds, in grant order. */
        sender_a = cluster_sender(&f->a, f->a.client);
        sender_b = cluster_sender(&f->b, f->b.client);
        on_a = test_owner_ok(f->a.client, "s", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(on_a->len, ==, 2);
        assert_holder(on_a->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(f->a.client), ta,
                      "connection");
        assert_holder(on_a->pdata[1], geteuid(), getpid(), f->comm, sender_b, tb, "connection");
        g_clear_pointer(&mode, g_free);
        on_b = test_owner_ok(f->b.client, "s", &mode);
        g_assert_cmpstr(mode, ==, "shared");
        g_assert_cmpuint(on_b->len, ==, 2);
        assert_holder(on_b->pdata[0], geteuid(), getpid(), f->comm, sender_a, ta, "connection");
        assert_holder(on_b->pdata[1], geteuid(), getpid(), f->comm, test_unique_name(f->b.client), tb,
                      "connection");

        /* An exclusive request does not fit. */
        r = test_acquire(a2, "s", NULL, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
        sd_bus_error_free(&error);

        /* A writer waits on A; a reader behind it on B waits too. */
        writer = test_acquire_async(a2, "s", WAIT_FOREVER("exclusive"));
        cluster_wait_keys(f, "s", 3);
        r = test_acquire(b2, "s", NO_WAIT("shared"), NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
        sd_bus_error_free(&error);
        reader = test_acquire_async(b2, "s", WAIT_FOREVER("shared"));
        cluster_wait_keys(f, "s", 4);
        assert_call_pending(writer);
        assert_call_pending(reader);

        /* The writer once both readers are gone, on both hosts. */
        test_unlock_ok(f->b.client, "s");
        assert_call_pending(writer);
        test_unlock_ok(f->a.client, "s");
        tw = test_call_wait_token(writer);
        g_assert_cmpuint(tw, >, tb);
        assert_call_pending(reader);

        test_unlock_ok(a2, "s");
        tr = test_call_wait_token(reader);
        g_assert_cmpuint(tr, >, tw);
        test_unlock_ok(b2, "s");
}

/* Tokens grow strictly, whichever host grants, for one resource and
 * across resources, for Lock, Acquire and AcquireFd. */
static void test_tokens_increase(ClusterFixture *f, gconstpointer data) {
        uint64_t last = 0;

        CLUSTER_SKIP_WITHOUT_ETCD();

        for (unsigned i = 0; i < 4; i++) {
                ClusterHost *h = i % 2 == 0 ? &f->a : &f->b;
                g_autofree char *other = g_strdup_printf("t%u", i);
                uint64_t t;
                int fd;

                t = test_lock_ok(h->client, "t");
                g_assert_cmpuint(t, >, last);
                last = t;
                test_unlock_ok(h->client, "t");

                t = test_acquire_ok(h->client, other, NULL);
                g_assert_cmpuint(t, >, last);
                last = t;

                fd = test_acquire_fd_ok(h->client, "t", NULL, &t);
                g_assert_cmpuint(t, >, last);
                last = t;
                close(fd);
                /* The hold ends with the fd: the other host can take it. */
                cluster_wait_keys(f, "t", 0);
        }
}

/* Unlock without waiting for an answer (lockbus_unlock_nowait()). */
static void unlock_nowait(sd_bus *bus, const char *resource) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                       LOCKBUS_MANAGER_IFACE, "Unlock"), >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "s", resource), >=, 0);
        g_assert_cmpint(sd_bus_message_set_expect_reply(m, false), >=, 0);
        g_assert_cmpint(sd_bus_send(bus, m, NULL), >=, 0);
}

/* A caller's calls are served in order, also while etcd answers an Unlock:
 * the Acquire right after an Unlock that is not waited for finds the
 * resource free. */
static void test_order_after_unlock_nowait(ClusterFixture *f, gconstpointer data) {
        uint64_t last = 0, t;

        CLUSTER_SKIP_WITHOUT_ETCD();

        for (unsigned i = 0; i < 10; i++) {
                t = test_acquire_ok(f->a.client, "n", NULL);
                g_assert_cmpuint(t, >, last);
                last = t;
                unlock_nowait(f->a.client, "n");

                t = test_lock_ok(f->a.client, "p");
                g_assert_cmpuint(t, >, last);
                last = t;
                unlock_nowait(f->a.client, "p");
        }

        /* The last ones are released too: the other host gets both. */
        t = test_acquire_ok(f->b.client, "n", &(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX });
        g_assert_cmpuint(t, >, last);
        t = test_acquire_ok(f->b.client, "p", &(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX });
        g_assert_cmpuint(t, >, last);
}

/* The same for a persistent hold taken on one connection and unlocked
 * from another of the same uid (as `lockbusctl lock` then `lockbusctl
 * unlock`): the unlocking connection's next Acquire waits for its Unlock. */
static void test_order_after_unlock_nowait_other_connection(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a2 = NULL;
        uint64_t last = 0, t;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a2 = test_bus_connect(f->a.bus);

        for (unsigned i = 0; i < 10; i++) {
                t = test_lock_ok(f->a.client, "q");
                g_assert_cmpuint(t, >, last);
                unlock_nowait(a2, "q");
                last = test_lock_ok(a2, "q");
                g_assert_cmpuint(last, >, t);
                test_unlock_ok(a2, "q");
        }
}

static void assert_same_rows(GPtrArray *x, GPtrArray *y) {
        g_assert_cmpuint(x->len, ==, y->len);
        for (unsigned i = 0; i < x->len; i++) {
                const TestHolder *p = x->pdata[i], *q = y->pdata[i];

                g_assert_cmpstr(p->resource, ==, q->resource);
                g_assert_cmpstr(p->mode, ==, q->mode);
                g_assert_cmpuint(p->uid, ==, q->uid);
                g_assert_cmpuint(p->pid, ==, q->pid);
                g_assert_cmpstr(p->comm, ==, q->comm);
                g_assert_cmpuint(p->token, ==, q->token);
                g_assert_cmpuint(p->since, ==, q->since);
                g_assert_cmpuint(p->expires, ==, q->expires);
                g_assert_cmpstr(p->scope, ==, q->scope);
                g_assert_cmpstr(p->description, ==, q->description);
        }
}

/* ListLocks on either host shows the holds of both, sorted by resource,
 * then grant order, senders qualified by host where not its own. */
static void test_list_both_hosts(ClusterFixture *f, gconstpointer data) {
        g_autoptr(GPtrArray) on_a = NULL, on_b = NULL;
        g_autofree char *sender_a = NULL, *sender_b = NULL;
        uint64_t t_pa, t_ca, t_sb, t_sa;
        const TestHolder *h;

        CLUSTER_SKIP_WITHOUT_ETCD();

        t_ca = test_acquire_ok(f->a.client, "l-conn", &(TestAcquireOptions) { .description = "on A" });
        t_pa = test_lock_ok(f->b.client, "l-pers");
        t_sb = test_acquire_ok(f->b.client, "l-shared", NO_WAIT("shared"));
        t_sa = test_acquire_ok(f->a.client, "l-shared", NO_WAIT("shared"));

        sender_a = cluster_sender(&f->a, f->a.client);
        sender_b = cluster_sender(&f->b, f->b.client);
        on_a = test_list_locks_ok(f->a.client);
        on_b = test_list_locks_ok(f->b.client);
        g_assert_cmpuint(on_a->len, ==, 4);
        assert_same_rows(on_a, on_b);

        h = on_a->pdata[0];
        g_assert_cmpstr(h->resource, ==, "l-conn");
        g_assert_cmpstr(h->mode, ==, "exclusive");
        g_assert_cmpstr(h->description, ==, "on A");
        assert_holder(h, geteuid(), getpid(), f->comm, test_unique_name(f->a.client), t_ca, "connection");
        assert_holder(on_b->pdata[0], geteuid(), getpid(), f->comm, sender_a, t_ca, "connection");

        h = on_a->pdata[1];
        g_assert_cmpstr(h->resource, ==, "l-pers");
        g_assert_cmpstr(h->mode, ==, "exclusive");
        assert_holder(h, geteuid(), getpid(), f->comm, sender_b, t_pa, "persistent");
        assert_holder(on_b->pdata[1], geteuid(), getpid(), f->comm, test_unique_name(f->b.client), t_pa,
                      "persistent");

        h = on_a->pdata[2];
        g_assert_cmpstr(h->resource, ==, "l-shared");
        g_assert_cmpstr(h->mode, ==, "shared");
        assert_holder(h, geteuid(), getpid(), f->comm, sender_b, t_sb, "connection");
        h = on_a->pdata[3];
        g_assert_cmpstr(h->resource, ==, "l-shared");
        assert_holder(h, geteuid(), getpid(), f->comm, test_unique_name(f->a.client), t_sa, "connection");

        test_unlock_ok(f->b.client, "l-pers");
}

/* Root on B breaks A's hold: both hosts see it free, A's Unlock finds
 * nothing, and B's waiter is served. A non-root Break is refused (no
 * polkit on these buses). */
static void test_break_other_host(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b2 = NULL;
        g_autoptr(TestCall) waiter = NULL;
        g_autoptr(TestClient) nobody = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *sender_b2 = NULL, *result = NULL, *message = NULL;
        uint64_t token, t_waiter;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        b2 = test_bus_connect(f->b.bus);

        token = test_acquire_ok(f->a.client, "brk", NULL);
        (void) test_lock_ok(f->a.client, "brk-pers");
        waiter = test_acquire_async(b2, "brk", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "brk", 2);

        if (geteuid() == 0) {
                nobody = test_client_start(f->b.bus, TEST_OTHER_UID, OTHER_COMM, test_client_serve, NULL);
                result = test_client_command(nobody, "Break brk");
                g_assert_true(g_str_has_prefix(result, "error " SD_BUS_ERROR_ACCESS_DENIED ": "));
                assert_call_pending(waiter);
        }

        test_break_ok(f->b.client, "brk");
        t_waiter = test_call_wait_token(waiter);
        g_assert_cmpuint(t_waiter, >, token);

        /* A sees B's waiter as the holder, and its own hold is gone. */
        sender_b2 = cluster_sender(&f->b, b2);
        holders = test_owner_ok(f->a.client, "brk", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, sender_b2, t_waiter, "connection");
        g_clear_pointer(&holders, g_ptr_array_unref);

        /* A's connection no longer holds it: its Unlock is refused (as on
         * one host) and, above all, leaves B's hold alone. */
        r = test_unlock(f->a.client, "brk", &error);
        holders = test_owner_ok(f->b.client, "brk", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(b2), t_waiter,
                      "connection");
        message = not_owner_on_host_message("brk", geteuid(), "hostB", "unlocked", geteuid());
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);

        /* A persistent hold of A, broken from B. */
        test_break_ok(f->b.client, "brk-pers");
        test_assert_not_locked(f->a.client, "brk-pers");
        test_assert_not_locked(f->b.client, "brk-pers");
        r = test_break(f->b.client, "brk-pers", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_LOCKED, "Resource 'brk-pers' not locked");
        sd_bus_error_free(&error);
        (void) test_lock_ok(f->b.client, "brk-pers");
        test_unlock_ok(f->b.client, "brk-pers");
        test_unlock_ok(b2, "brk");
}

/* Not re-entrant: the same connection, or the same uid's persistent hold
 * on the same host, is refused at once even with a timeout; the same uid
 * on the other host is another owner and queues. */
static void test_not_reentrant(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *a2 = NULL;
        g_autoptr(TestCall) other_host = NULL;
        uint64_t token, t_pers;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        a2 = test_bus_connect(f->a.bus);

        token = test_acquire_ok(f->a.client, "re", NULL);
        r = test_acquire(f->a.client, "re", WAIT_FOREVER(NULL), NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
        sd_bus_error_free(&error);
        r = test_acquire(f->a.client, "re", WAIT_FOREVER("shared"), NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
        sd_bus_error_free(&error);
        /* Nothing was queued. */
        cluster_wait_keys(f, "re", 1);
        g_assert_cmpuint(test_get_property_u(f->a.client, "WaiterCount"), ==, 0);

        /* A persistent hold is the uid's on this host: another connection
         * of it is the same owner. */
        t_pers = test_lock_ok(f->a.client, "re-pers");
        g_assert_cmpuint(t_pers, >, token);
        r = test_acquire(a2, "re-pers", &(TestAcquireOptions) { .scope = "persistent", .has_timeout = true,
                                                                  .timeout = UINT64_MAX }, NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, NULL);
        sd_bus_error_free(&error);
        cluster_wait_keys(f, "re-pers", 1);

        /* The same uid on host B is not the same owner: it waits. */
        other_host = test_acquire_async(f->b.client, "re-pers",
                                        &(TestAcquireOptions) { .scope = "persistent", .has_timeout = true,
                                                                .timeout = UINT64_MAX });
        cluster_wait_keys(f, "re-pers", 2);
        assert_call_pending(other_host);
        test_unlock_ok(a2, "re-pers");
        g_assert_cmpuint(test_call_wait_token(other_host), >, t_pers);
        test_unlock_ok(f->b.client, "re-pers");
        test_unlock_ok(f->a.client, "re");
}

/* The same across hosts for a caller that is not root (uid 65534). */
static void test_non_root(ClusterFixture *f, gconstpointer data) {
        g_autoptr(TestClient) on_a = NULL, on_b = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *message = NULL, *result = NULL, *expected = NULL, *unique_a = NULL,
                        *sender_a = NULL, *reply = NULL;
        uint64_t token, t_b;
        TestHolder *h;

        CLUSTER_SKIP_WITHOUT_ETCD();
        if (test_skip_unless_root())
                return;

        on_a = test_client_start(f->a.bus, TEST_OTHER_UID, OTHER_COMM, test_client_serve, NULL);
        on_b = test_client_start(f->b.bus, TEST_OTHER_UID, OTHER_COMM, test_client_serve, NULL);
        result = test_client_command(on_a, "Unique");
        g_assert_true(g_str_has_prefix(result, "ok "));
        unique_a = g_strdup(result + 3);
        sender_a = g_strconcat(unique_a, "@hostA", NULL);

        token = test_client_command_ok(on_a, "Acquire nr description=nobody");
        g_assert_cmpuint(token, >, 0);

        /* B's nobody: refused, naming A's nobody and host A. */
        message = locked_on_host_message("nr", TEST_OTHER_UID, on_a->pid, OTHER_COMM, "hostA");
        expected = g_strconcat("error " LOCKBUS_ERROR_ALREADY_LOCKED ": ", message, NULL);
        assert_client_command(on_b, expected, "Acquire nr");
        assert_client_command(on_b, expected, "Lock nr");

        /* Owner as root on B. */
        holders = test_owner_ok(f->b.client, "nr", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        assert_holder(h, TEST_OTHER_UID, on_a->pid, OTHER_COMM, sender_a, token, "connection");
        g_assert_cmpstr(h->description, ==, "nobody");

        /* B's nobody waits, A's releases: granted on B. */
        (void) test_client_command_ok(on_b, "Start w nr timeout=max");
        cluster_wait_keys(f, "nr", 2);
        assert_client_command(on_a, "ok", "Unlock nr");
        reply = test_client_wait_reply(on_b, "w");
        g_assert_true(g_str_has_prefix(reply, "ok "));
        t_b = g_ascii_strtoull(reply + 3, NULL, 10);
        g_assert_cmpuint(t_b, >, token);

        /* Not re-entrant for it either. */
        g_clear_pointer(&result, g_free);
        result = test_client_command(on_b, "Acquire nr timeout=max");
        g_assert_true(g_str_has_prefix(result, "error " LOCKBUS_ERROR_ALREADY_LOCKED ": "));
        assert_client_command(on_b, "ok", "Unlock nr");
        cluster_wait_keys(f, "nr", 0);

        /* Break is root's (or polkit's): refused on both hosts. */
        (void) test_client_command_ok(on_a, "Lock nr-pers");
        g_clear_pointer(&result, g_free);
        result = test_client_command(on_b, "Break nr-pers");
        g_assert_true(g_str_has_prefix(result, "error " SD_BUS_ERROR_ACCESS_DENIED ": "));
        assert_client_command(on_a, "ok", "Unlock nr-pers");
}

/* A waiter on B that times out or disconnects leaves the queue (its key is
 * gone); a holder on A that disconnects frees the resource for B. */
static void test_timeout_and_disconnect(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *b3 = NULL;
        sd_bus *a1 = NULL, *b2 = NULL;
        g_autoptr(TestCall) w3 = NULL;
        TestCall *w2;
        uint64_t t, started;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();
        b3 = test_bus_connect(f->b.bus);
        a1 = test_bus_connect(f->a.bus);
        b2 = test_bus_connect(f->b.bus);

        t = test_acquire_ok(a1, "w", NULL);

        started = test_now_monotonic();
        r = test_acquire(f->b.client, "w", &(TestAcquireOptions) { .has_timeout = true, .timeout = 300000 },
                         NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_TIMEOUT, NULL);
        g_assert_cmpuint(test_now_monotonic() - started, >=, 300000);
        sd_bus_error_free(&error);
        cluster_wait_keys(f, "w", 1);

        w2 = test_acquire_async(b2, "w", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "w", 2);
        g_assert_cmpuint(test_get_property_u(f->b.client, "WaiterCount"), ==, 1);
        test_call_free(w2);
        test_bus_disconnect(f->b.client, b2);
        cluster_wait_keys(f, "w", 1);
        g_assert_cmpuint(test_get_property_u(f->b.client, "WaiterCount"), ==, 0);

        w3 = test_acquire_async(b3, "w", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "w", 2);
        assert_call_pending(w3);
        test_bus_disconnect(f->a.client, a1);
        g_assert_cmpuint(test_call_wait_token(w3), >, t);
        g_assert_cmpuint(test_get_property_u(f->a.client, "LockCount"), ==, 0);
        test_unlock_ok(b3, "w");
}

/* A hold's TTL across hosts: B sees A's expiry and its Refresh, may not
 * refresh it itself, and its waiter is served at the (new) expiry, not
 * before; A's connection holds nothing afterwards. */
static void test_ttl_refresh(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autoptr(TestCall) waiter = NULL;
        g_autofree char *message = NULL;
        const TestHolder *h;
        uint64_t t, e1, e2, before, tw, now;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        t = test_acquire_ok(f->a.client, "ttl", &(TestAcquireOptions) { .has_ttl = true, .ttl = 1000000 });
        holders = test_owner_ok(f->b.client, "ttl", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        h = holders->pdata[0];
        g_assert_cmpuint(h->token, ==, t);
        e1 = h->expires;
        g_assert_cmpuint(e1, ==, h->since + 1000000);
        g_clear_pointer(&holders, g_ptr_array_unref);

        before = test_now_realtime();
        e2 = test_refresh_ok(f->a.client, "ttl");
        g_assert_cmpuint(e2, >, e1);
        g_assert_cmpuint(e2, >=, before + 1000000);
        holders = test_owner_ok(f->b.client, "ttl", NULL);
        g_assert_cmpuint(((TestHolder *) holders->pdata[0])->expires, ==, e2);
        g_clear_pointer(&holders, g_ptr_array_unref);

        message = not_owner_on_host_message("ttl", geteuid(), "hostA", "refreshed", geteuid());
        r = test_refresh(f->b.client, "ttl", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);

        waiter = test_acquire_async(f->b.client, "ttl", WAIT_FOREVER(NULL));
        cluster_wait_keys(f, "ttl", 2);
        tw = test_call_wait_token(waiter);
        now = test_now_realtime();
        if (now < e2)
                g_error("B's waiter was granted %" PRIu64 " µs before A's hold expired", e2 - now);
        g_assert_cmpuint(tw, >, t);

        g_clear_pointer(&message, g_free);
        message = not_owner_on_host_message("ttl", geteuid(), "hostB", "unlocked", geteuid());
        r = test_unlock(f->a.client, "ttl", &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_NOT_OWNER, message);
        sd_bus_error_free(&error);
        test_unlock_ok(f->b.client, "ttl");
}

static const char *const quota_args[] = { "--max-locks-per-user=2", "--max-waiters-per-user=1", NULL };

/* Quotas in cluster mode: a uid's holds and its requests under way in etcd
 * count, per daemon; root is never limited. */
static void test_quota(ClusterFixture *f, gconstpointer data) {
        g_autoptr(TestClient) on_a = NULL;
        g_autofree char *expected = NULL, *reply = NULL;

        CLUSTER_SKIP_WITHOUT_ETCD();
        if (test_skip_unless_root())
                return;

        (void) test_lock_ok(f->b.client, "busy");
        on_a = test_client_start(f->a.bus, TEST_OTHER_UID, OTHER_COMM, test_client_serve, NULL);

        /* One hold, one waiter: the waiter quota (1) is used up. */
        (void) test_client_command_ok(on_a, "Acquire q1");
        (void) test_client_command_ok(on_a, "Start w busy timeout=max");
        cluster_wait_keys(f, "busy", 2);

        expected = g_strdup_printf("error " LOCKBUS_ERROR_QUOTA_EXCEEDED ": Resource 'q2' not granted: uid %u is "
                                   "at its limit of 2 locks and 1 waiting calls", (unsigned) TEST_OTHER_UID);
        assert_client_command(on_a, expected, "Acquire q2 timeout=max");
        /* And holds plus waiting calls reach the lock quota (2). */
        g_clear_pointer(&expected, g_free);
        expected = g_strdup_printf("error " LOCKBUS_ERROR_QUOTA_EXCEEDED ": Resource 'q3' not granted: uid %u is "
                                   "at its limit of 2 locks and 1 waiting calls", (unsigned) TEST_OTHER_UID);
        assert_client_command(on_a, expected, "Acquire q3");

        /* Root is never limited. */
        (void) test_acquire_ok(f->a.client, "r1", NULL);
        (void) test_acquire_ok(f->a.client, "r2", NULL);
        (void) test_acquire_ok(f->a.client, "r3", NULL);

        /* The waiter is granted when B lets go; then a slot is free again. */
        test_unlock_ok(f->b.client, "busy");
        reply = test_client_wait_reply(on_a, "w");
        g_assert_true(g_str_has_prefix(reply, "ok "));
        assert_client_command(on_a, "ok", "Unlock busy");
        (void) test_client_command_ok(on_a, "Acquire q3");
}

static const char *const idle_args[] = { "--idle-timeout=1", NULL };

/* Exit on idle in cluster mode: a persistent hold does not keep A's daemon
 * (it is in etcd), and blocks B meanwhile; the next call on A activates it
 * again, as the same host. */
static void test_idle_exit(ClusterFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(TestNameWatch) w = NULL;
        g_autoptr(GPtrArray) holders = NULL;
        g_autofree char *owner = NULL, *message = NULL;
        uint64_t t;
        int r;

        CLUSTER_SKIP_WITHOUT_ETCD();

        w = test_bus_watch_name(f->a.client, LOCKBUS_BUS_NAME);
        t = test_lock_ok(f->a.client, "idle");
        /* Asked after the watch is in place: an owner we see leaves in a
         * signal we get. */
        owner = test_bus_daemon_name(f->a.bus);
        if (owner)
                test_name_watch_wait_lost_by(w, owner);
        g_clear_pointer(&owner, g_free);
        owner = test_bus_daemon_name(f->a.bus);
        g_assert_null(owner);

        message = locked_on_host_message("idle", geteuid(), getpid(), f->comm, "hostA");
        r = test_lock(f->b.client, "idle", NULL, &error);
        assert_call_error(r, &error, LOCKBUS_ERROR_ALREADY_LOCKED, message);
        sd_bus_error_free(&error);

        /* Activated again: the hold is its host's, its uid unlocks it. */
        holders = test_owner_ok(f->a.client, "idle", NULL);
        g_assert_cmpuint(holders->len, ==, 1);
        assert_holder(holders->pdata[0], geteuid(), getpid(), f->comm, test_unique_name(f->a.client), t,
                      "persistent");
        test_unlock_ok(f->a.client, "idle");
        g_assert_cmpuint(test_lock_ok(f->b.client, "idle"), >, t);
        test_unlock_ok(f->b.client, "idle");
}

int main(int argc, char *argv[]) {
        cluster_test_init(&argc, &argv);

        cluster_test_add("/cluster/exclusive/blocks-other-host", test_exclusive_blocks_other_host);
        cluster_test_add("/cluster/wait/fifo-across-hosts", test_fifo_across_hosts);
        cluster_test_add("/cluster/wait/timeout-and-disconnect", test_timeout_and_disconnect);
        cluster_test_add("/cluster/shared/both-hosts", test_shared_both_hosts);
        cluster_test_add("/cluster/ttl/refresh-and-expiry", test_ttl_refresh);
        cluster_test_add("/cluster/tokens/increase", test_tokens_increase);
        cluster_test_add("/cluster/order/unlock-nowait", test_order_after_unlock_nowait);
        cluster_test_add("/cluster/order/unlock-nowait-other-connection",
                         test_order_after_unlock_nowait_other_connection);
        cluster_test_add("/cluster/list/both-hosts", test_list_both_hosts);
        cluster_test_add("/cluster/reentry/refused", test_not_reentrant);
        cluster_test_add("/cluster/non-root/across-hosts", test_non_root);
        cluster_test_add("/cluster/break/other-host", test_break_other_host);
        cluster_test_add_with_args("/cluster/quota/per-daemon", quota_args, test_quota);
        cluster_test_add_with_args("/cluster/idle/exit-and-activation", idle_args, test_idle_exit);

        return cluster_test_run();
}
