/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The checker over the clients' logs (format in torture-client.c): what
 * the live checks cannot see because it spans processes and time.
 *
 *   1. Unique tokens: no token is handed out twice (grants and holds found
 *      after a lost reply).
 *   2. Tokens never go back across restarts: every token granted by
 *      generation G+1 (the reply's sender names the generation) is above
 *      every token granted by generations up to G.
 *   3. FIFO: for requests A and B on one resource, where A's wait was
 *      confirmed (QUEUED, after a round trip proving lockbusd had queued
 *      it) before B was sent (SEND):
 *        a. if both were granted, A's token is below B's;
 *        b. if A timed out, B was not granted before A could have timed
 *           out: B's reply (DONE) came no earlier than A's SEND + TIMEOUT
 *           (A's timer starts when lockbusd reads A, not before SEND, and
 *           a timer never fires early).
 *      A request killed with its client, or whose lockbusd died, has no
 *      record or an outcome other than granted/timeout and takes no
 *      part. */

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "torture.h"

typedef struct Record {
        unsigned slot;
        unsigned incarnation;
        unsigned res;
        bool shared;
        char scope[16];
        uint64_t timeout;
        uint64_t send;
        uint64_t queued;
        uint64_t done;
        char outcome[16];
        uint64_t token;
        char sender[64];
} Record;

static bool parse_record(const char *line, Record *ret) {
        char mode[16], timeout[32];
        Record r = {};

        if (sscanf(line, "A %u %u %u %15s %15s %31s %" SCNu64 " %" SCNu64 " %" SCNu64 " %15s %" SCNu64 " %63s",
                   &r.slot, &r.incarnation, &r.res, mode, r.scope, timeout, &r.send, &r.queued, &r.done,
                   r.outcome, &r.token, r.sender) != 12)
                return false;
        r.shared = streq(mode, "shared");
        r.timeout = streq(timeout, "max") ? UINT64_MAX : g_ascii_strtoull(timeout, NULL, 10);
        *ret = r;
        return true;
}

static GArray *read_records(TortureRun *run, const char *log_dir, uint64_t *ret_stops) {
        g_autoptr(GError) error = NULL;
        g_autoptr(GDir) d = g_dir_open(log_dir, 0, &error);
        GArray *records = g_array_new(false, false, sizeof(Record));
        const char *name;

        if (!d)
                g_error("Failed to open %s: %s", log_dir, error->message);
        while ((name = g_dir_read_name(d))) {
                g_autofree char *path = NULL, *contents = NULL;
                g_auto(GStrv) lines = NULL;

                if (!g_str_has_prefix(name, "client-") || !g_str_has_suffix(name, ".log"))
                        continue;
                path = g_build_filename(log_dir, name, NULL);
                if (!g_file_get_contents(path, &contents, NULL, &error))
                        g_error("Failed to read %s: %s", path, error->message);
                lines = g_strsplit(contents, "\n", -1);
                for (char **l = lines; *l; l++) {
                        Record r;

                        if (g_str_has_prefix(*l, "S "))
                                (*ret_stops)++;
                        if (!g_str_has_prefix(*l, "A "))
                                continue;
                        if (!parse_record(*l, &r) || r.res >= run->options->n_resources)
                                torture_violation(run->shared, "unparsable record in %s: %s", path, *l);
                        else
                                g_array_append_val(records, r);
                }
        }
        return records;
}

static bool is_granted(const Record *r) {
        return streq(r->outcome, "granted");
}

static int compare_token(gconstpointer a, gconstpointer b) {
        const Record *x = *(const Record *const *) a, *y = *(const Record *const *) b;

        return x->token < y->token ? -1 : x->token > y->token;
}

static int compare_queued(gconstpointer a, gconstpointer b) {
        const Record *x = *(const Record *const *) a, *y = *(const Record *const *) b;

        return x->queued < y->queued ? -1 : x->queued > y->queued;
}

static void check_unique_tokens(TortureRun *run, GArray *records, CheckStats *st) {
        g_autoptr(GPtrArray) held = g_ptr_array_new();

        for (guint i = 0; i < records->len; i++) {
                Record *r = &g_array_index(records, Record, i);

                if (is_granted(r) || streq(r->outcome, "recovered"))
                        g_ptr_array_add(held, r);
        }
        g_ptr_array_sort(held, compare_token);
        for (guint i = 1; i < held->len; i++) {
                const Record *a = held->pdata[i - 1], *b = held->pdata[i];

                st->tokens_checked++;
                if (a->token == b->token)
                        torture_violation(run->shared, "token %" PRIu64 " handed out twice: to slot %u on '%s' (%s) "
                                          "and to slot %u on '%s' (%s)", a->token, a->slot,
                                          run->resources[a->res], a->outcome, b->slot, run->resources[b->res],
                                          b->outcome);
        }
}

static void check_generations(TortureRun *run, GArray *records, GPtrArray *generations) {
        guint n = generations->len;
        g_autofree uint64_t *min = g_new(uint64_t, n + 1), *max = g_new0(uint64_t, n + 1);
        uint64_t below = 0;

        for (guint g = 0; g <= n; g++)
                min[g] = UINT64_MAX;

        for (guint i = 0; i < records->len; i++) {
                Record *r = &g_array_index(records, Record, i);
                guint g;

                if (!is_granted(r))
                        continue;
                for (g = 0; g < n; g++)
                        if (streq(((TortureGeneration *) generations->pdata[g])->unique_name, r->sender))
                                break;
                if (g == n) {
                        torture_violation(run->shared, "slot %u was granted '%s' (token %" PRIu64 ") by %s, "
                                          "which is no lockbusd generation", r->slot, run->resources[r->res],
                                          r->token, r->sender);
                        continue;
                }
                min[g] = MIN(min[g], r->token);
                max[g] = MAX(max[g], r->token);
        }

        for (guint g = 0; g < n; g++) {
                if (min[g] == UINT64_MAX)
                        continue;
                if (min[g] <= below)
                        torture_violation(run->shared, "tokens went back: generation %u granted token %" PRIu64
                                          ", an earlier one had granted %" PRIu64,
                                          ((TortureGeneration *) generations->pdata[g])->gen, min[g], below);
                below = MAX(below, max[g]);
        }
}

static void check_fifo(TortureRun *run, GArray *records, CheckStats *st) {
        for (unsigned res = 0; res < run->options->n_resources; res++) {
                g_autoptr(GPtrArray) granted_waits = g_ptr_array_new(), timed_out = g_ptr_array_new();
                g_autofree uint64_t *max_token = NULL, *max_deadline = NULL;
                g_autofree guint *argmax_token = NULL, *argmax_deadline = NULL;

                for (guint i = 0; i < records->len; i++) {
                        Record *r = &g_array_index(records, Record, i);

                        if (r->res != res || r->queued == 0)
                                continue;
                        if (is_granted(r))
                                g_ptr_array_add(granted_waits, r);
                        else if (streq(r->outcome, "timeout") && r->timeout != UINT64_MAX)
                                g_ptr_array_add(timed_out, r);
                }
                g_ptr_array_sort(granted_waits, compare_queued);
                g_ptr_array_sort(timed_out, compare_queued);

                /* Prefix maxima over the queue confirmations in time order. */
                max_token = g_new(uint64_t, granted_waits->len + 1);
                argmax_token = g_new(guint, granted_waits->len + 1);
                for (guint i = 0; i < granted_waits->len; i++) {
                        const Record *a = granted_waits->pdata[i];

                        if (i == 0 || a->token > max_token[i - 1]) {
                                max_token[i] = a->token;
                                argmax_token[i] = i;
                        } else {
                                max_token[i] = max_token[i - 1];
                                argmax_token[i] = argmax_token[i - 1];
                        }
                }
                max_deadline = g_new(uint64_t, timed_out->len + 1);
                argmax_deadline = g_new(guint, timed_out->len + 1);
                for (guint i = 0; i < timed_out->len; i++) {
                        const Record *a = timed_out->pdata[i];
                        uint64_t d = a->send + a->timeout;

                        if (i == 0 || d > max_deadline[i - 1]) {
                                max_deadline[i] = d;
                                argmax_deadline[i] = i;
                        } else {
                                max_deadline[i] = max_deadline[i - 1];
                                argmax_deadline[i] = argmax_deadline[i - 1];
                        }
                }

                for (guint i = 0; i < records->len; i++) {
                        Record *b = &g_array_index(records, Record, i);
                        guint lo, hi;

                        if (b->res != res || !is_granted(b))
                                continue;

                        /* Waits confirmed before B was sent: a prefix. */
                        for (lo = 0, hi = granted_waits->len; lo < hi;) {
                                guint mid = (lo + hi) / 2;

                                if (((Record *) granted_waits->pdata[mid])->queued < b->send)
                                        lo = mid + 1;
                                else
                                        hi = mid;
                        }
                        st->fifo_pairs += lo;
                        if (lo > 0 && max_token[lo - 1] > b->token) {
                                const Record *a = granted_waits->pdata[argmax_token[lo - 1]];

                                torture_violation(run->shared, "FIFO on '%s': slot %u queued (confirmed at %" PRIu64
                                                  ") before slot %u asked (at %" PRIu64 "), but got token %"
                                                  PRIu64 " > %" PRIu64, run->resources[res], a->slot,
                                                  a->queued, b->slot, b->send, a->token, b->token);
                        }

                        for (lo = 0, hi = timed_out->len; lo < hi;) {
                                guint mid = (lo + hi) / 2;

                                if (((Record *) timed_out->pdata[mid])->queued < b->send)
                                        lo = mid + 1;
                                else
                                        hi = mid;
                        }
                        st->fifo_timeout_pairs += lo;
                        if (lo > 0 && max_deadline[lo - 1] > b->done) {
                                const Record *a = timed_out->pdata[argmax_deadline[lo - 1]];

                                torture_violation(run->shared, "FIFO on '%s': slot %u was granted (token %" PRIu64
                                                  ", answered at %" PRIu64 ") while slot %u, queued ahead of it "
                                                  "(confirmed at %" PRIu64 "), still waited (it timed out, "
                                                  "not before %" PRIu64 ")", run->resources[res], b->slot,
                                                  b->token, b->done, a->slot, a->queued,
                                                  a->send + a->timeout);
                        }
                }
        }
}

void torture_check_logs(TortureRun *run, const char *log_dir, GPtrArray *generations, CheckStats *ret) {
        uint64_t before = atomic_load(&run->shared->n_violations), stops = 0;
        g_autoptr(GArray) records = read_records(run, log_dir, &stops);
        CheckStats st = { .records = records->len };

        for (guint i = 0; i < records->len; i++)
                if (is_granted(&g_array_index(records, Record, i)))
                        st.grants++;

        check_unique_tokens(run, records, &st);
        check_generations(run, records, generations);
        check_fifo(run, records, &st);

        if (stops != run->options->n_clients)
                torture_violation(run->shared, "%" PRIu64 " of %u clients stopped cleanly", stops,
                                  run->options->n_clients);

        st.violations = atomic_load(&run->shared->n_violations) - before;
        *ret = st;
}
