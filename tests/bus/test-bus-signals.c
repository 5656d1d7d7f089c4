/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* LockLost: the connection that acquired a hold hears, and only it, when
 * the hold ends without its owner asking (its TTL ran out, it was broken),
 * on the bus and on the direct socket; an Unlock or a closed fd sends
 * nothing. Every wait is for the signal itself, or for a round trip after
 * which a signal would have arrived (the daemon sends it before it
 * answers the call that caused it, and one connection keeps the order). */

#include <string.h>

#include "bus-test.h"

#define USEC_PER_MSEC ((uint64_t) 1000U)

typedef struct LostSignal {
        bool received;
        unsigned count;
        char *resource;
        uint64_t token;
        char *reason;
} LostSignal;

static void lost_signal_clear(LostSignal *s) {
        g_clear_pointer(&s->resource, g_free);
        g_clear_pointer(&s->reason, g_free);
}

static int on_lock_lost(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        LostSignal *s = userdata;
        const char *resource, *reason;
        uint64_t token;

        g_assert_cmpint(sd_bus_message_read(m, "sts", &resource, &token, &reason), >, 0);
        lost_signal_clear(s);
        s->resource = g_strdup(resource);
        s->token = token;
        s->reason = g_strdup(reason);
        s->count++;
        s->received = true;
        return 0;
}

/* A unicast signal needs no match rule to arrive; the slot only routes it
 * to the callback. sd_bus_match_signal() adds the rule anyway: harmless. */
static sd_bus_slot *watch_lock_lost(sd_bus *bus, LostSignal *s) {
        sd_bus_slot *slot = NULL;

        g_assert_cmpint(sd_bus_match_signal(bus, &slot, NULL, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE, "LockLost",
                                            on_lock_lost, s), >=, 0);
        return slot;
}

static void assert_lost(const LostSignal *s, const char *resource, uint64_t token, const char *reason) {
        g_assert_true(s->received);
        g_assert_cmpstr(s->resource, ==, resource);
        g_assert_cmpuint(s->token, ==, token);
        g_assert_cmpstr(s->reason, ==, reason);
}

static void test_lost_expired(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        LostSignal s = {};
        uint64_t token;

        slot = watch_lock_lost(f->client, &s);
        token = test_acquire_ok(f->client, "ttl", &(TestAcquireOptions) { .has_ttl = true, .ttl = 100 * USEC_PER_MSEC });

        test_bus_process_until(f->client, &s.received, -1, "LockLost after the TTL");
        assert_lost(&s, "ttl", token, "expired");
        test_assert_not_locked(f->client, "ttl");
        lost_signal_clear(&s);
}

static void test_lost_broken(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL, *breaker_slot = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *breaker = NULL;
        LostSignal s = {}, at_breaker = {};
        uint64_t t_conn, t_pers;

        if (test_skip_unless_root())
                return;

        breaker = test_bus_connect(f->bus);
        slot = watch_lock_lost(f->client, &s);
        breaker_slot = watch_lock_lost(breaker, &at_breaker);

        t_conn = test_acquire_ok(f->client, "conn", NULL);
        test_break_ok(breaker, "conn");
        test_bus_process_until(f->client, &s.received, -1, "LockLost after Break");
        assert_lost(&s, "conn", t_conn, "broken");

        /* A persistent hold too, while its connection lives. */
        s.received = false;
        t_pers = test_lock_ok(f->client, "pers");
        test_break_ok(breaker, "pers");
        test_bus_process_until(f->client, &s.received, -1, "LockLost after Break of a persistent hold");
        assert_lost(&s, "pers", t_pers, "broken");

        /* Only to the holder. */
        test_bus_sync(breaker);
        g_assert_false(at_breaker.received);
        lost_signal_clear(&s);
}

static void test_lost_not_on_unlock(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *waiter = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        LostSignal s = {};
        int fd = -1;

        waiter = test_bus_connect(f->bus);
        slot = watch_lock_lost(f->client, &s);

        (void) test_acquire_ok(f->client, "a", NULL);
        test_unlock_ok(f->client, "a");
        (void) test_lock_ok(f->client, "p");
        test_unlock_ok(f->client, "p");

        /* An fd hold whose fd the owner closes. */
        g_assert_cmpint(test_acquire_fd(f->client, "fd", NULL, &fd, NULL, &error), >=, 0);
        g_assert_cmpint(close(fd), ==, 0);
        /* Granted once the daemon saw the fd close. */
        (void) test_acquire_ok(waiter, "fd", &(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX });

        test_bus_sync(f->client);
        g_assert_false(s.received);
}

static void test_lost_direct(TestFixture *f, gconstpointer data) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *direct = NULL;
        LostSignal s = {};
        uint64_t token;

        test_bus_start_daemon(f->bus);
        direct = test_bus_connect_direct(f->bus);
        slot = watch_lock_lost(direct, &s);

        token = test_acquire_ok(direct, "ttl", &(TestAcquireOptions) { .has_ttl = true, .ttl = 100 * USEC_PER_MSEC });
        test_bus_process_until(direct, &s.received, -1, "LockLost on the direct socket");
        assert_lost(&s, "ttl", token, "expired");
        lost_signal_clear(&s);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        test_add("/signals/lock-lost/expired", test_lost_expired);
        test_add("/signals/lock-lost/broken", test_lost_broken);
        test_add("/signals/lock-lost/not-on-unlock", test_lost_not_on_unlock);
        test_add("/signals/lock-lost/direct", test_lost_direct);

        return g_test_run();
}
