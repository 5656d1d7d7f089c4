/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The lock table's decisions, without a bus or a disk. */

#include <glib.h>

#include "lock-table.h"

static uint64_t next_token = 1;

static Hold *make_hold(const char *resource, LockMode mode, HoldScope scope, uid_t uid, const char *sender) {
        Hold *h = hold_new();

        h->resource = g_strdup(resource);
        h->mode = mode;
        h->scope = scope;
        h->uid = uid;
        h->sender = g_strdup(sender);
        h->token = next_token++;
        return h;
}

static void test_exclusive(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        const Hold *blocker = NULL;
        Hold *h;

        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_EXCLUSIVE, 1000, ":1.1", NULL), ==, LOCK_VERDICT_GRANT);
        h = make_hold("db", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 1000, ":1.1");
        lock_table_add(t, h);
        g_assert_cmpuint(lock_table_resource_count(t), ==, 1);

        /* Another owner is blocked in either mode, and told who blocks it. */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_EXCLUSIVE, 1001, ":1.2", &blocker), ==, LOCK_VERDICT_CONFLICT);
        g_assert_true(blocker == h);
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1001, ":1.2", &blocker), ==, LOCK_VERDICT_CONFLICT);

        /* Same uid, other connection: a connection hold is not the uid's. */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_EXCLUSIVE, 1000, ":1.3", NULL), ==, LOCK_VERDICT_CONFLICT);

        /* The holder itself is refused as re-entry, in either mode. */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1000, ":1.1", &blocker), ==, LOCK_VERDICT_HELD_BY_CALLER);

        /* Other resources are independent. */
        g_assert_cmpint(lock_table_check(t, "db2", LOCK_MODE_EXCLUSIVE, 1001, ":1.2", NULL), ==, LOCK_VERDICT_GRANT);

        hold_free(lock_table_remove(t, h));
        g_assert_cmpuint(lock_table_resource_count(t), ==, 0);
        g_assert_null(lock_table_get_holds(t, "db"));
}

static void test_shared(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        const Hold *blocker = NULL;
        const GQueue *holds;
        Hold *a, *b;

        a = make_hold("db", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 1000, ":1.1");
        lock_table_add(t, a);
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1001, ":1.2", NULL), ==, LOCK_VERDICT_GRANT);
        b = make_hold("db", LOCK_MODE_SHARED, HOLD_SCOPE_PERSISTENT, 1001, ":1.2");
        lock_table_add(t, b);

        /* Grant order is kept. */
        holds = lock_table_get_holds(t, "db");
        g_assert_cmpuint(g_queue_get_length((GQueue *) holds), ==, 2);
        g_assert_true(holds->head->data == a);
        g_assert_true(holds->tail->data == b);

        /* An exclusive request is blocked by the first shared holder. */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_EXCLUSIVE, 1002, ":1.9", &blocker), ==, LOCK_VERDICT_CONFLICT);
        g_assert_true(blocker == a);

        /* Any connection of uid 1001 already holds it through the persistent hold. */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1001, ":1.7", &blocker), ==, LOCK_VERDICT_HELD_BY_CALLER);
        g_assert_true(blocker == b);

        hold_free(lock_table_remove(t, a));
        g_assert_cmpuint(lock_table_resource_count(t), ==, 1);
        hold_free(lock_table_remove(t, b));
        g_assert_cmpuint(lock_table_resource_count(t), ==, 0);
}

static void test_find_owned(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        Hold *persistent, *connection;

        persistent = make_hold("db", LOCK_MODE_SHARED, HOLD_SCOPE_PERSISTENT, 1000, ":1.1");
        connection = make_hold("db", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 1000, ":1.5");
        lock_table_add(t, persistent);
        lock_table_add(t, connection);

        /* The connection's own hold goes first, then the uid's persistent one. */
        g_assert_true(lock_table_find_owned(t, "db", 1000, ":1.5") == connection);
        g_assert_true(lock_table_find_owned(t, "db", 1000, ":1.6") == persistent);
        g_assert_null(lock_table_find_owned(t, "db", 1001, ":1.7"));
        g_assert_null(lock_table_find_owned(t, "free", 1000, ":1.5"));
}

static void test_by_sender(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        g_autoptr(GPtrArray) of_1 = NULL, of_2 = NULL;

        lock_table_add(t, make_hold("a", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 1000, ":1.1"));
        lock_table_add(t, make_hold("b", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_FD, 1000, ":1.1"));
        lock_table_add(t, make_hold("c", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1000, ":1.1"));
        lock_table_add(t, make_hold("d", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 1000, ":1.2"));

        /* Persistent holds do not die with their connection. */
        of_1 = lock_table_holds_of_sender(t, ":1.1");
        g_assert_cmpuint(of_1->len, ==, 2);
        for (guint i = 0; i < of_1->len; i++)
                hold_free(lock_table_remove(t, of_1->pdata[i]));

        of_2 = lock_table_holds_of_sender(t, ":1.1");
        g_assert_cmpuint(of_2->len, ==, 0);
        g_assert_cmpuint(lock_table_resource_count(t), ==, 2);
}

static void test_list_sorted(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        g_autoptr(GPtrArray) all = NULL;
        const char *expected[] = { "a", "a", "b", "\xc3\xbc" };

        lock_table_add(t, make_hold("\xc3\xbc", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 1, ":1.1"));
        lock_table_add(t, make_hold("b", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_CONNECTION, 1, ":1.1"));
        lock_table_add(t, make_hold("a", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 1, ":1.2"));
        lock_table_add(t, make_hold("a", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 1, ":1.1"));

        all = lock_table_list(t);
        g_assert_cmpuint(all->len, ==, G_N_ELEMENTS(expected));
        for (guint i = 0; i < all->len; i++)
                g_assert_cmpstr(((Hold *) all->pdata[i])->resource, ==, expected[i]);
        /* Within a resource, grant order. */
        g_assert_cmpstr(((Hold *) all->pdata[0])->sender, ==, ":1.2");
        g_assert_cmpstr(((Hold *) all->pdata[1])->sender, ==, ":1.1");
}

static Waiter make_waiter(const char *resource, LockMode mode, uid_t uid, const char *sender) {
        return (Waiter) {
                .resource = resource,
                .mode = mode,
                .scope = HOLD_SCOPE_CONNECTION,
                .uid = uid,
                .sender = sender,
        };
}

/* Serves the head of the queue as the manager does; returns how many were
 * granted. */
static unsigned serve(LockTable *t, const char *resource) {
        unsigned n = 0;
        Waiter *w;

        while ((w = lock_table_peek_waiter(t, resource)) &&
               lock_table_check_waiter(t, w, NULL) == LOCK_VERDICT_GRANT) {
                lock_table_dequeue(t, w);
                lock_table_add(t, make_hold(w->resource, w->mode, w->scope, w->uid, w->sender));
                n++;
        }
        return n;
}

static void test_queue_fair(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        Waiter writer = make_waiter("db", LOCK_MODE_EXCLUSIVE, 1001, ":1.2");
        Waiter reader1 = make_waiter("db", LOCK_MODE_SHARED, 1002, ":1.3");
        Waiter reader2 = make_waiter("db", LOCK_MODE_SHARED, 1003, ":1.4");
        const Hold *blocker = NULL;
        Hold *first;

        first = make_hold("db", LOCK_MODE_SHARED, HOLD_SCOPE_CONNECTION, 1000, ":1.1");
        lock_table_add(t, first);

        /* A writer waits behind a reader; a later reader fits the holds but
         * waits behind the writer (no writer starvation). */
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_EXCLUSIVE, 1001, ":1.2", NULL), ==, LOCK_VERDICT_CONFLICT);
        lock_table_enqueue(t, &writer);
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1002, ":1.3", &blocker), ==, LOCK_VERDICT_CONFLICT);
        g_assert_true(blocker == first);
        lock_table_enqueue(t, &reader1);
        lock_table_enqueue(t, &reader2);
        g_assert_cmpuint(lock_table_waiter_count(t), ==, 3);
        g_assert_cmpuint(lock_table_uid_usage(t, 1002).n_waiters, ==, 1);

        /* Nothing moves while the reader holds. */
        g_assert_cmpuint(serve(t, "db"), ==, 0);

        /* The reader goes: the writer alone gets it. */
        hold_free(lock_table_remove(t, first));
        g_assert_cmpuint(serve(t, "db"), ==, 1);
        g_assert_cmpuint(lock_table_waiter_count(t), ==, 2);
        g_assert_cmpuint(lock_table_uid_usage(t, 1001).n_holds, ==, 1);

        /* The writer goes: both adjacent readers get it together. */
        hold_free(lock_table_remove(t, (Hold *) lock_table_get_holds(t, "db")->head->data));
        g_assert_cmpuint(serve(t, "db"), ==, 2);
        g_assert_cmpuint(lock_table_waiter_count(t), ==, 0);
        g_assert_cmpuint(lock_table_uid_usage(t, 1002).n_waiters, ==, 0);
        g_assert_cmpuint(lock_table_uid_usage(t, 1002).n_holds, ==, 1);
}

static void test_queue_cancel(void) {
        _cleanup_(lock_table_freep) LockTable *t = lock_table_new();
        Waiter a = make_waiter("db", LOCK_MODE_EXCLUSIVE, 1001, ":1.2");
        Waiter b = make_waiter("db", LOCK_MODE_EXCLUSIVE, 1002, ":1.3");
        g_autoptr(GPtrArray) of_b = NULL;
        Hold *h;

        h = make_hold("db", LOCK_MODE_EXCLUSIVE, HOLD_SCOPE_PERSISTENT, 1000, ":1.1");
        lock_table_add(t, h);
        lock_table_enqueue(t, &a);
        lock_table_enqueue(t, &b);

        of_b = lock_table_waiters_of_sender(t, ":1.3");
        g_assert_cmpuint(of_b->len, ==, 1);
        g_assert_true(of_b->pdata[0] == &b);

        /* The head leaves (timeout, disconnect): the next one is the head. */
        lock_table_dequeue(t, &a);
        g_assert_true(lock_table_peek_waiter(t, "db") == &b);

        /* A resource with only waiters is listed by nobody but still queues. */
        hold_free(lock_table_remove(t, h));
        g_assert_cmpuint(lock_table_resource_count(t), ==, 0);
        g_assert_cmpint(lock_table_check(t, "db", LOCK_MODE_SHARED, 1003, ":1.4", NULL), ==, LOCK_VERDICT_CONFLICT);
        g_assert_cmpuint(serve(t, "db"), ==, 1);
        g_assert_cmpuint(lock_table_volatile_hold_count(t), ==, 1);
}

int main(int argc, char *argv[]) {
        g_test_init(&argc, &argv, NULL);

        g_test_add_func("/lock-table/exclusive", test_exclusive);
        g_test_add_func("/lock-table/shared", test_shared);
        g_test_add_func("/lock-table/find-owned", test_find_owned);
        g_test_add_func("/lock-table/by-sender", test_by_sender);
        g_test_add_func("/lock-table/list-sorted", test_list_sorted);
        g_test_add_func("/lock-table/queue/fair", test_queue_fair);
        g_test_add_func("/lock-table/queue/cancel", test_queue_cancel);

        return g_test_run();
}
