/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Load that a client can put on lockbusd: 10,000 waiting calls from one
 * uid (its quota stops them; others are unaffected), a client that never
 * reads its replies (the daemon is not blocked by it), thousands of waits
 * dropped at once by disconnecting, and the daemon's memory, which must
 * come back to its baseline after each of those.
 *
 * How memory is judged: lockbusd's RssAnon (anonymous resident memory:
 * heap and stacks; code and other file pages are left out). RSS of a glibc
 * program rarely shrinks when memory is freed, so "back to the first value"
 * would be wrong; instead the same workload runs several times. The first
 * runs (warm-up) grow the heap to what the workload needs; after that,
 * freed memory is reused and RssAnon stays flat, but for a step now and
 * then when the heap's layout shifts. A leak instead grows it in every
 * run, by what each run leaks: every run makes thousands of waiters, so
 * 8 bytes each are 40 KiB or more a run. So a leak is reported when every
 * run after the warm-up grew RssAnon by LEAK_KIB_PER_RUN or more, or when
 * they grew it by more than FLAT_MAX_KIB in all. (Measured here: after the
 * warm-up runs add 0-60 kB in all, in one step if at all; a daemon built to
 * leak one 8-byte string per waiter grew 130-250 kB in every run.)
 * Valgrind/ASan are the other tools for leaks (not here: they change what
 * is measured). */

#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "faults-test.h"

/* See above. */
#define LEAK_KIB_PER_RUN 32U
#define FLAT_MAX_KIB 4096U

/* dbus-daemon (1.14, system bus defaults) has a limit of pending replies
 * per connection; a connection here never has more calls outstanding than
 * this. */
#define CALLS_PER_CONNECTION 100U

/* Under ASan/UBSan (scripts/test.sh sets LOCKBUS_SANITIZE) memory is the
 * sanitizer's: quarantined frees and shadow pages say nothing about leaks,
 * which LeakSanitizer checks there instead. The behaviour is still tested. */
static bool memory_is_judged(void) {
        if (getenv("LOCKBUS_SANITIZE")) {
                g_test_message("memory not judged under sanitizers");
                return false;
        }
        return true;
}

/* rss: RssAnon after each of n_warmup + n_measured runs (see above). */
static void assert_memory_flat(const uint64_t *rss, unsigned n_warmup, unsigned n_measured, const char *what) {
        uint64_t min_step = UINT64_MAX, total;

        if (!memory_is_judged())
                return;
        g_assert_cmpuint(n_warmup, >, 0);
        for (unsigned i = n_warmup; i < n_warmup + n_measured; i++)
                min_step = MIN(min_step, rss[i] > rss[i - 1] ? rss[i] - rss[i - 1] : 0);
        total = rss[n_warmup + n_measured - 1] > rss[n_warmup - 1] ? rss[n_warmup + n_measured - 1] - rss[n_warmup - 1] : 0;

        if (min_step >= LEAK_KIB_PER_RUN)
                g_error("lockbusd's RssAnon grew in each of %u runs of %s after the warm-up, by %" PRIu64 " kB "
                        "or more (%" PRIu64 " -> %" PRIu64 " kB): a leak", n_measured, what, min_step,
                        rss[n_warmup - 1], rss[n_warmup + n_measured - 1]);
        if (total >= FLAT_MAX_KIB)
                g_error("lockbusd's RssAnon grew by %" PRIu64 " kB over %u runs of %s after the warm-up "
                        "(%" PRIu64 " -> %" PRIu64 " kB)", total, n_measured, what,
                        rss[n_warmup - 1], rss[n_warmup + n_measured - 1]);
}

static sd_bus_message *new_waiter_call(sd_bus *bus, const char *resource, unsigned i) {
        sd_bus_message *m = faults_new_call(bus, "Acquire");

        /* A mix: both modes, both scopes, waiting forever or with a timer. */
        g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", resource, 3,
                                              "mode", "s", i % 2 ? "shared" : "exclusive",
                                              "scope", "s", i % 3 ? "connection" : "persistent",
                                              "timeout", "t", i % 5 ? UINT64_MAX : (uint64_t) 3600000000U), >=, 0);
        return m;
}

static sd_bus_message *new_get_waiter_count(sd_bus *bus) {
        sd_bus_message *m = NULL;

        g_assert_cmpint(sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                       "org.freedesktop.DBus.Properties", "Get"), >=, 0);
        g_assert_cmpint(sd_bus_message_append(m, "ss", LOCKBUS_MANAGER_IFACE, "WaiterCount"), >=, 0);
        return m;
}

/* ---- Thousands of waits, dropped by disconnecting ------------------------------------------ */

/* n_buses new connections of ours, each with per_bus waiting calls spread
 * over the resources; returns once the daemon has queued all of them. */
static GPtrArray *queue_waiters(FaultsFixture *f, unsigned n_buses, unsigned per_bus,
                                const char *const *resources, size_t n_resources) {
        GPtrArray *buses = g_ptr_array_new();
        g_autoptr(FaultsBatch) waits = faults_batch_new(), syncs = faults_batch_new();

        for (unsigned i = 0; i < n_buses; i++)
                g_ptr_array_add(buses, test_bus_connect(f->bus));

        for (unsigned j = 0; j < per_bus; j++)
                for (unsigned i = 0; i < n_buses; i++) {
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m =
                                new_waiter_call(buses->pdata[i], resources[(i + j) % n_resources], j);

                        faults_batch_send(waits, buses->pdata[i], m);
                }

        /* Read after the Acquires of its connection: when all are
         * answered, every Acquire was queued or answered. */
        for (unsigned i = 0; i < n_buses; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = new_get_waiter_count(buses->pdata[i]);

                faults_batch_send(syncs, buses->pdata[i], m);
        }
        faults_batch_wait(syncs, (sd_bus *const *) buses->pdata, n_buses, n_buses, "WaiterCount on every connection");
        g_assert_cmpuint(faults_batch_count(syncs, "ok"), ==, n_buses);

        /* None was answered: all wait. */
        g_assert_cmpuint(faults_batch_n_replies(waits), ==, 0);
        return buses;
}

/* Closes them all at once and returns once the bus has seen each go. */
static void disconnect_all(FaultsFixture *f, GPtrArray *buses) {
        g_autoptr(GPtrArray) watches = g_ptr_array_new_with_free_func((GDestroyNotify) test_name_watch_free);

        for (guint i = 0; i < buses->len; i++)
                g_ptr_array_add(watches, test_bus_watch_name(f->client, test_unique_name(buses->pdata[i])));
        for (guint i = 0; i < buses->len; i++)
                sd_bus_flush_close_unref(buses->pdata[i]);
        g_ptr_array_unref(buses);
        for (guint i = 0; i < watches->len; i++)
                test_name_watch_wait_gone(watches->pdata[i]);
}

static void test_disconnect_with_waits(FaultsFixture *f, gconstpointer data) {
        static const char *const resources[] = { "d0", "d1", "d2", "d3", "d4" };
        const unsigned n_buses = 50, per_bus = CALLS_PER_CONNECTION, n = n_buses * per_bus;
        const unsigned n_warmup = 3, n_measured = 4;
        uint64_t rss[n_warmup + n_measured];
        uint64_t t_before, t_after;
        unsigned fds;
        pid_t pid;

        if (test_skip_unless_root())   /* root has no waiter quota */
                return;
        pid = faults_start_daemon(f);

        for (size_t i = 0; i < ELEMENTSOF(resources); i++)
                t_before = test_acquire_ok(f->client, resources[i], NULL);
        fds = faults_count_fds(pid);

        for (unsigned run = 0; run < n_warmup + n_measured; run++) {
                GPtrArray *buses;

                buses = queue_waiters(f, n_buses, per_bus, resources, ELEMENTSOF(resources));
                g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, n);

                disconnect_all(f, buses);
                g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
                g_assert_cmpuint(test_get_property_u(f->client, "LockCount"), ==, ELEMENTSOF(resources));
                g_assert_cmpuint(faults_count_fds(pid), ==, fds);

                rss[run] = faults_proc_status_kib(pid, "RssAnon");
                g_test_message("run %u: %u waits queued and dropped, lockbusd RssAnon %" PRIu64 " kB",
                               run + 1, n, rss[run]);
        }

        /* Nothing of them is left: the holds are as they were, and the
         * resources go to the next caller. */
        for (size_t i = 0; i < ELEMENTSOF(resources); i++)
                test_unlock_ok(f->client, resources[i]);
        for (size_t i = 0; i < ELEMENTSOF(resources); i++)
                faults_assert_not_held(f->client, resources[i]);
        t_after = test_lock_ok(f->client, resources[0]);
        g_assert_cmpuint(t_after, ==, t_before + 1);
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);

        assert_memory_flat(rss, n_warmup, n_measured, "5,000 waits dropped");
}

/* ---- 10,000 waits from one uid ----------------------------------------------------------------- */

typedef struct FloodCounts {
        unsigned n_replies;
        unsigned n_ok;
        unsigned n_quota;
        unsigned n_other;
        char *other;            /* the first other result */
        unsigned n_syncs;
} FloodCounts;

static int on_flood_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        FloodCounts *c = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        c->n_replies++;
        if (!e)
                c->n_ok++;
        else if (streq(e->name, LOCKBUS_ERROR_QUOTA_EXCEEDED))
                c->n_quota++;
        else {
                c->n_other++;
                if (!c->other)
                        c->other = g_strdup_printf("%s: %s", e->name, strempty(e->message));
        }
        return 0;
}

static int on_flood_sync(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        ((FloodCounts *) userdata)->n_syncs++;
        return 0;
}

/* Client side (no g_assert): n_connections connections of this uid, each
 * sending CALLS_PER_CONNECTION waiting Acquires of "q" without waiting
 * for replies, then one WaiterCount each; once those are answered, every
 * Acquire was queued or refused. Reports "name UNIQUE" per connection,
 * then "result OK QUOTA OTHER [FIRST-OTHER]", then keeps the connections
 * until the parent closes its end. */
static int flood_client(sd_bus *bus, int fd, void *userdata) {
        const unsigned n_connections = GPOINTER_TO_UINT(userdata);
        g_autofree sd_bus **buses = g_new0(sd_bus *, n_connections);
        g_autofree struct pollfd *p = g_new(struct pollfd, n_connections);
        FloodCounts c = {};
        const char *address;
        int r;

        if (sd_bus_get_address(bus, &address) < 0)
                return 2;
        buses[0] = bus;
        for (unsigned i = 1; i < n_connections; i++)
                if (sd_bus_new(&buses[i]) < 0 || sd_bus_set_address(buses[i], address) < 0 ||
                    sd_bus_set_bus_client(buses[i], true) < 0 || sd_bus_start(buses[i]) < 0) {
                        test_client_send(fd, "error setup: connection %u failed", i);
                        return 2;
                }
        for (unsigned i = 0; i < n_connections; i++) {
                const char *unique;

                if (sd_bus_get_unique_name(buses[i], &unique) < 0)
                        return 2;
                test_client_send(fd, "name %s", unique);
        }

        for (unsigned j = 0; j < CALLS_PER_CONNECTION; j++)
                for (unsigned i = 0; i < n_connections; i++) {
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                        r = sd_bus_message_new_method_call(buses[i], &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                           LOCKBUS_MANAGER_IFACE, "Acquire");
                        if (r >= 0)
                                r = sd_bus_message_append(m, "sa{sv}", "q", 1, "timeout", "t", UINT64_MAX);
                        if (r >= 0)
                                r = sd_bus_call_async(buses[i], NULL, m, on_flood_reply, &c, UINT64_MAX);
                        if (r < 0) {
                                test_client_send(fd, "error send: %s", g_strerror(-r));
                                return 2;
                        }
                }
        for (unsigned i = 0; i < n_connections; i++) {
                r = sd_bus_call_method_async(buses[i], NULL, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                             "org.freedesktop.DBus.Properties", "Get", on_flood_sync, &c, "ss",
                                             LOCKBUS_MANAGER_IFACE, "WaiterCount");
                if (r < 0)
                        return 2;
        }

        while (c.n_syncs < n_connections) {
                bool progress = false;

                for (unsigned i = 0; i < n_connections; i++) {
                        r = sd_bus_process(buses[i], NULL);
                        if (r < 0) {
                                test_client_send(fd, "error process: %s", g_strerror(-r));
                                return 2;
                        }
                        if (r > 0)
                                progress = true;
                }
                if (progress)
                        continue;
                for (unsigned i = 0; i < n_connections; i++)
                        p[i] = (struct pollfd) { .fd = sd_bus_get_fd(buses[i]),
                                                 .events = (short) sd_bus_get_events(buses[i]) };
                if (poll(p, n_connections, 30000) <= 0)
                        return 2;
        }

        test_client_send(fd, "result %u %u %u %s", c.n_ok, c.n_quota, c.n_other, strempty(c.other));
        test_client_block(fd);
        for (unsigned i = 1; i < n_connections; i++)
                sd_bus_flush_close_unref(buses[i]);
        g_free(c.other);
        return 0;
}

/* A flood: a client of TEST_OTHER_UID with n_connections connections,
 * each sending CALLS_PER_CONNECTION waiting Acquires of "q" at once.
 * Returns once every call is queued or refused; *ret_watches get a watch
 * (on f->client) of each of its connections. */
static TestClient *flood_start(FaultsFixture *f, unsigned n_connections, unsigned *ret_n_quota,
                               GPtrArray **ret_watches) {
        GPtrArray *watches = g_ptr_array_new_with_free_func((GDestroyNotify) test_name_watch_free);
        g_autofree char *line = NULL;
        unsigned n_ok = 0, n_other = 0;
        TestClient *flood;

        flood = test_client_start(f->bus, TEST_OTHER_UID, "flood", flood_client, GUINT_TO_POINTER(n_connections));
        for (unsigned i = 0; i < n_connections; i++) {
                g_autofree char *name_line = test_client_read_line(flood);

                g_assert_nonnull(name_line);
                if (!g_str_has_prefix(name_line, "name "))
                        g_error("flood client: %s", name_line);
                g_ptr_array_add(watches, test_bus_watch_name(f->client, name_line + strlen("name ")));
        }
        line = test_client_read_line(flood);
        g_assert_nonnull(line);
        if (sscanf(line, "result %u %u %u", &n_ok, ret_n_quota, &n_other) != 3)
                g_error("flood client: %s", line);
        if (n_other > 0)
                g_error("flood client got %u unexpected answers: %s", n_other, line);
        g_assert_cmpuint(n_ok, ==, 0);

        *ret_watches = watches;
        return flood;
}

/* Kills it (all its connections close at once) and returns once the bus
 * has seen each go. */
static void flood_kill(TestClient *flood, GPtrArray *watches) {
        test_client_kill(flood);
        test_client_free(flood);
        for (guint i = 0; i < watches->len; i++)
                test_name_watch_wait_gone(watches->pdata[i]);
        g_ptr_array_unref(watches);
}

static void test_waiters_quota(FaultsFixture *f, gconstpointer data) {
        const unsigned n_connections = 100, n = n_connections * CALLS_PER_CONNECTION;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *root_waiter = NULL;
        g_autoptr(TestClient) second = NULL, same_uid = NULL;
        g_autoptr(TestCall) c_root = NULL;
        g_autofree char *reply = NULL;
        const unsigned n_warmup = 1, n_measured = 3;
        uint64_t rss[n_warmup + n_measured], t_q;
        GPtrArray *watches = NULL;
        TestClient *flood;
        unsigned n_quota = 0;
        uid_t uid2;
        pid_t pid;

        if (test_skip_unless_root())
                return;
        pid = faults_start_daemon(f);
        t_q = test_acquire_ok(f->client, "q", NULL);

        /* 128 wait, every other call is refused with QuotaExceeded. */
        flood = flood_start(f, n_connections, &n_quota, &watches);
        g_assert_cmpuint(n_quota, ==, n - 128);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 128);

        /* Others are unaffected: root and another uid wait as they like,
         * and the flooding uid may still hold (its waits count against its
         * 1024 locks, 128 < 1024), just not wait. */
        root_waiter = test_bus_connect(f->bus);
        c_root = test_acquire_async(root_waiter, "q", &(TestAcquireOptions) { .has_timeout = true, .timeout = UINT64_MAX });
        g_assert_cmpuint(test_get_property_u(root_waiter, "WaiterCount"), ==, 129);
        uid2 = test_second_uid();
        if (uid2 > 0) {
                second = test_client_start(f->bus, uid2, "second", test_client_serve, NULL);
                g_assert_cmpuint(test_client_command_ok(second, "Start 1 q timeout=max"), ==, 130);
                (void) test_client_command_ok(second, "Lock second-uid");
        } else
                g_test_message("No second unprivileged account: only root shows others are unaffected");
        same_uid = test_client_start(f->bus, TEST_OTHER_UID, "same-uid", test_client_serve, NULL);
        (void) test_client_command_ok(same_uid, "Lock same-uid");
        reply = test_client_command(same_uid, "Acquire q timeout=max");
        g_assert_true(g_str_has_prefix(reply, "error " LOCKBUS_ERROR_QUOTA_EXCEEDED ": "));
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, second ? 130 : 129);

        /* The flood goes away at once: its 128 waits leave the queue, the
         * others keep their places. */
        flood_kill(flood, watches);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, second ? 2 : 1);

        test_unlock_ok(f->client, "q");
        g_assert_cmpuint(test_call_wait_token(c_root), >, t_q);
        test_bus_disconnect(f->client, TAKE_PTR(root_waiter));
        if (second) {
                g_clear_pointer(&reply, g_free);
                reply = test_client_wait_reply(second, "1");
                g_assert_true(g_str_has_prefix(reply, "ok "));
                assert_client_command(second, "ok", "Unlock q");
        }
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        (void) test_acquire_ok(f->client, "q", NULL);

        /* Again and again: the daemon's memory comes back to where the
         * first floods took it (see the top of this file). */
        for (unsigned run = 0; run < n_warmup + n_measured; run++) {
                flood = flood_start(f, n_connections, &n_quota, &watches);
                g_assert_cmpuint(n_quota, ==, n - 128);
                flood_kill(flood, watches);
                g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
                rss[run] = faults_proc_status_kib(pid, "RssAnon");
                g_test_message("flood %u: %u waits of one uid, lockbusd RssAnon %" PRIu64 " kB", run + 1, n, rss[run]);
        }
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);

        assert_memory_flat(rss, n_warmup, n_measured, "10,000 calls of one uid");
}

/* ---- Clients that never read their replies -------------------------------------------------------- */

/* Client side (no g_assert): sends CALLS_PER_CONNECTION ListLocks calls
 * expecting replies (under dbus-daemon's 128 pending replies per
 * connection), then Lock of "<tag>-done" (which lockbusd logs, after it
 * answered those calls), and never reads a reply. Reports "sent"; then
 * for each line from the parent "unread BYTES", what waits unread in its
 * socket. It exits when the parent closes its end. */
static int never_reads_client(sd_bus *bus, int fd, void *userdata) {
        g_autofree char *resource = g_strdup_printf("%s-done", (const char *) userdata);
        int r;

        for (unsigned i = 0; i <= CALLS_PER_CONNECTION; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                bool last = i == CALLS_PER_CONNECTION;
                uint64_t cookie;

                r = sd_bus_message_new_method_call(bus, &m, LOCKBUS_BUS_NAME, LOCKBUS_OBJECT_PATH,
                                                   LOCKBUS_MANAGER_IFACE, last ? "Lock" : "ListLocks");
                if (r >= 0 && last)
                        r = sd_bus_message_append(m, "s", resource);
                /* With a cookie: a reply is expected (without, sd-bus sets
                 * NO_REPLY_EXPECTED). */
                if (r >= 0)
                        r = sd_bus_send(bus, m, &cookie);
                /* Writes what is queued; reads nothing. */
                if (r >= 0)
                        r = sd_bus_flush(bus);
                if (r < 0) {
                        test_client_send(fd, "error send: %s", g_strerror(-r));
                        return 2;
                }
        }
        test_client_send(fd, "sent");

        for (;;) {
                char buf[64];
                ssize_t k = read(fd, buf, sizeof(buf));
                int unread = 0;

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return 0;
                if (ioctl(sd_bus_get_fd(bus), FIONREAD, &unread) < 0)
                        return 2;
                test_client_send(fd, "unread %d", unread);
        }
}

/* Clients of one unprivileged uid that each ask for 100 large replies and
 * read none: 200 holds with 1 KiB descriptions make a ListLocks reply
 * ~220 KiB, so ~22 MiB a client. dbus-daemon (1.14) queues what a receiver
 * does not read (up to max_outgoing_bytes, 127 MiB, per receiver; from
 * some 50 MiB on it also stops passing on that receiver's own calls), and
 * charges every queued message to its sender as well, up to
 * max_incoming_bytes (127 MiB): here all of it to lockbusd. Whatever
 * dbus-daemon does with the replies, lockbusd must go on answering
 * everybody else, without keeping the replies itself. */
static void never_reads(FaultsFixture *f, unsigned n_readers) {
        const unsigned n_holds = 200;
        g_autofree char *description = g_strnfill(LOCKBUS_DESCRIPTION_MAX, 'x');
        g_autoptr(GPtrArray) readers = g_ptr_array_new_with_free_func((GDestroyNotify) test_client_free);
        g_autoptr(GPtrArray) tags = g_ptr_array_new_with_free_func(g_free);
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *prober = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        g_autoptr(FaultsBatch) holds = faults_batch_new();
        g_autoptr(TestClient) other = NULL;
        g_autoptr(TestCall) probe = NULL;
        g_autoptr(GPtrArray) locks = NULL;
        uint64_t rss_before, rss_during, rss_after;
        pid_t pid;

        if (test_skip_unless_root())
                return;
        pid = faults_start_daemon(f);

        for (unsigned i = 0; i < n_holds; i++) {
                g_autofree char *resource = g_strdup_printf("big-%03u", i);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(f->client, "Acquire");

                g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", resource, 1, "description", "s", description), >=, 0);
                faults_batch_send(holds, f->client, m);
                if ((i + 1) % 50 == 0)
                        faults_batch_wait(holds, &f->client, 1, i + 1, "Acquire replies");
        }
        g_assert_cmpuint(faults_batch_count(holds, "ok"), ==, n_holds);
        rss_before = faults_proc_status_kib(pid, "RssAnon");

        /* One after the other: each has had all its calls answered before
         * the next starts. */
        for (unsigned i = 0; i < n_readers; i++) {
                g_autofree char *line = NULL, *granted = NULL;
                char *tag = g_strdup_printf("reader%u", i);
                TestClient *c;

                g_ptr_array_add(tags, tag);
                c = test_client_start(f->bus, TEST_OTHER_UID, "never-reads", never_reads_client, tag);
                g_ptr_array_add(readers, c);
                line = test_client_read_line(c);
                g_assert_cmpstr(line, ==, "sent");
                granted = g_strdup_printf("Granted '%s-done'", tag);
                if (!faults_try_wait_log(f, granted))
                        g_error("lockbusd did not get to the calls of client %u of uid %u within %u s, after %u "
                                "client(s) of that uid left ~%u MiB of replies unread", i + 1,
                                (unsigned) TEST_OTHER_UID, TEST_TIMEOUT_USEC / 1000000U, i, i * 22);
        }

        /* The replies wait, unread. */
        for (unsigned i = 0; i < n_readers; i++) {
                TestClient *c = readers->pdata[i];
                g_autofree char *line = NULL;
                unsigned unread = 0;

                g_assert_cmpint(write(c->fd, "unread\n", 7), ==, 7);
                line = test_client_read_line(c);
                g_assert_cmpint(sscanf(line, "unread %u", &unread), ==, 1);
                g_assert_cmpuint(unread, >, 0);
        }

        /* Meanwhile lockbusd answers everybody else (within
         * TEST_TIMEOUT_USEC), and does not keep the replies itself. */
        prober = test_bus_connect(f->bus);
        probe = test_acquire_async(prober, "probe", NULL);
        test_call_wait(probe);
        if (test_call_result(probe, &error) < 0)
                g_error("lockbusd's answer to another client did not arrive while %u client(s) of uid %u left "
                        "~%u MiB of replies unread: %s: %s", n_readers, (unsigned) TEST_OTHER_UID, n_readers * 22,
                        error.name, error.message);
        locks = test_list_locks_ok(f->client);
        g_assert_cmpuint(locks->len, ==, n_holds + 1 + n_readers);
        other = test_client_start(f->bus, test_second_uid() ?: TEST_OTHER_UID, "other", test_client_serve, NULL);
        (void) test_client_command_ok(other, "Lock other");
        assert_client_command(other, "ok", "Unlock other");
        rss_during = faults_proc_status_kib(pid, "RssAnon");
        g_test_message("lockbusd RssAnon: %" PRIu64 " kB before, %" PRIu64 " kB with %u x %u replies of "
                       "~220 KiB unread", rss_before, rss_during, n_readers, CALLS_PER_CONNECTION);
        if (memory_is_judged())
                g_assert_cmpuint(rss_during, <, rss_before + 8 * 1024);

        /* They go away; nothing of them stays. */
        for (unsigned i = 0; i < n_readers; i++)
                test_client_kill(readers->pdata[i]);
        g_assert_cmpuint(test_get_property_u(f->client, "WaiterCount"), ==, 0);
        rss_after = faults_proc_status_kib(pid, "RssAnon");
        if (memory_is_judged())
                g_assert_cmpuint(rss_after, <, rss_before + 8 * 1024);
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);
}

/* ~44 MiB unread: dbus-daemon keeps it all. */
static void test_never_reads_within_limits(FaultsFixture *f, gconstpointer data) {
        never_reads(f, 2);
}

/* ~154 MiB unread from one uid's 7 connections, each under
 * max_outgoing_bytes, together over max_incoming_bytes of their sender:
 * lockbusd. */
static void test_never_reads_over_limits(FaultsFixture *f, gconstpointer data) {
        never_reads(f, 7);
}

/* Client side (no g_assert): on lockbusd's direct socket (peer to peer,
 * no dbus-daemon in between), sends n ListLocks calls expecting replies,
 * then Lock of "direct-done", reads nothing, reports "sent", and waits
 * for the parent to close its end. */
static int direct_never_reads_client(sd_bus *unused, int fd, void *userdata) {
        const char *path = userdata;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        g_autofree char *address = g_strconcat("unix:path=", path, NULL);
        int r;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r >= 0)
                r = sd_bus_call_method(bus, NULL, LOCKBUS_OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping",
                                       NULL, NULL, NULL);
        if (r < 0) {
                test_client_send(fd, "error connect: %s", g_strerror(-r));
                return 2;
        }

        for (unsigned i = 0; i <= 4 * CALLS_PER_CONNECTION; i++) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                bool last = i == 4 * CALLS_PER_CONNECTION;
                uint64_t cookie;

                r = sd_bus_message_new_method_call(bus, &m, NULL, LOCKBUS_OBJECT_PATH, LOCKBUS_MANAGER_IFACE,
                                                   last ? "Lock" : "ListLocks");
                if (r >= 0 && last)
                        r = sd_bus_message_append(m, "s", "direct-done");
                if (r >= 0)
                        r = sd_bus_send(bus, m, &cookie);
                if (r >= 0)
                        r = sd_bus_flush(bus);
                if (r < 0) {
                        test_client_send(fd, "error send: %s", g_strerror(-r));
                        return 2;
                }
        }
        test_client_send(fd, "sent");
        test_client_block(fd);
        return 0;
}

/* The same on the direct socket: nobody but lockbusd can hold the replies
 * there. It must not keep an unbounded amount of them (~88 MiB here) for
 * a peer that does not read (it closes that connection), and must go on
 * serving others. */
static void test_never_reads_direct(FaultsFixture *f, gconstpointer data) {
        const unsigned n_holds = 200;
        g_autofree char *description = g_strnfill(LOCKBUS_DESCRIPTION_MAX, 'x');
        g_autofree char *path = NULL, *line = NULL;
        g_autoptr(FaultsBatch) holds = faults_batch_new();
        g_autoptr(TestClient) reader = NULL, other = NULL;
        uint64_t rss_before, rss_during;
        pid_t pid;

        if (test_skip_unless_root())
                return;
        pid = faults_start_daemon(f);
        path = g_build_filename(f->bus->runtime_dir, LOCKBUS_DIRECT_SOCKET_NAME, NULL);
        if (!g_file_test(path, G_FILE_TEST_EXISTS)) {
                g_test_skip("lockbusd has no direct socket");
                return;
        }

        for (unsigned i = 0; i < n_holds; i++) {
                g_autofree char *resource = g_strdup_printf("big-%03u", i);
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = faults_new_call(f->client, "Acquire");

                g_assert_cmpint(sd_bus_message_append(m, "sa{sv}", resource, 1, "description", "s", description), >=, 0);
                faults_batch_send(holds, f->client, m);
                if ((i + 1) % 50 == 0)
                        faults_batch_wait(holds, &f->client, 1, i + 1, "Acquire replies");
        }
        g_assert_cmpuint(faults_batch_count(holds, "ok"), ==, n_holds);
        rss_before = faults_proc_status_kib(pid, "RssAnon");

        reader = test_client_start(f->bus, TEST_OTHER_UID, "direct-reader", direct_never_reads_client, path);
        line = test_client_read_line(reader);
        g_assert_cmpstr(line, ==, "sent");
        /* The daemon cuts off a direct peer that leaves replies unread. */
        faults_wait_log(f, "does not read its replies");

        other = test_client_start(f->bus, test_second_uid() ?: TEST_OTHER_UID, "other", test_client_serve, NULL);
        (void) test_client_command_ok(other, "Lock other");
        rss_during = faults_proc_status_kib(pid, "RssAnon");
        g_test_message("lockbusd RssAnon: %" PRIu64 " kB before, %" PRIu64 " kB with %u replies of ~220 KiB "
                       "unread on its direct socket", rss_before, rss_during, 4 * CALLS_PER_CONNECTION);
        if (memory_is_judged() && rss_during >= rss_before + 16 * 1024)
                g_error("lockbusd keeps the replies for a direct peer that does not read them: RssAnon "
                        "%" PRIu64 " kB -> %" PRIu64 " kB", rss_before, rss_during);

        test_client_kill(reader);
        assert_client_command(other, "ok", "Unlock other");
        g_assert_cmpint(test_bus_daemon_pid(f->bus), ==, pid);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        faults_add("/faults/load/disconnect-with-waits", NULL, test_disconnect_with_waits);
        faults_add("/faults/load/waiters-quota", NULL, test_waiters_quota);
        faults_add("/faults/load/never-reads/within-bus-limits", NULL, test_never_reads_within_limits);
        /* A known limit of dbus-daemon (see README, Reliability): run it
         * with LOCKBUS_TEST_KNOWN_LIMITS=1 to see it. */
        if (getenv("LOCKBUS_TEST_KNOWN_LIMITS"))
                faults_add("/faults/load/never-reads/over-bus-limits", NULL, test_never_reads_over_limits);
        faults_add("/faults/load/never-reads/direct-socket", NULL, test_never_reads_direct);

        return g_test_run();
}
