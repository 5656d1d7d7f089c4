/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "torture.h"

const char *torture_mode_to_string(TortureMode m) {
        return m == TORTURE_SHARED ? "shared" : "exclusive";
}

static const char *const scope_names[_TORTURE_SCOPE_MAX] = {
        [TORTURE_PERSISTENT] = "persistent",
        [TORTURE_CONNECTION] = "connection",
        [TORTURE_FD] = "fd",
};

const char *torture_scope_to_string(TortureScope s) {
        return s < _TORTURE_SCOPE_MAX ? scope_names[s] : "?";
}

int torture_scope_from_string(const char *s) {
        for (int i = 0; i < _TORTURE_SCOPE_MAX; i++)
                if (streq(s, scope_names[i]))
                        return i;
        return -EINVAL;
}

TortureShared *torture_shared_new(void) {
        void *p = mmap(NULL, sizeof(TortureShared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

        if (p == MAP_FAILED)
                g_error("Failed to map the shared state: %s", g_strerror(errno));
        return p; /* zeroed */
}

void torture_shared_free(TortureShared *s) {
        if (s)
                (void) munmap(s, sizeof(TortureShared));
}

void torture_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t timeout_usec) {
        struct timespec ts = {
                .tv_sec = (time_t) (timeout_usec / 1000000U),
                .tv_nsec = (long) (timeout_usec % 1000000U) * 1000L,
        };

        /* Shared (not FUTEX_PRIVATE): the word lives in a MAP_SHARED
         * mapping used by several processes. EAGAIN (changed already),
         * EINTR and ETIMEDOUT all mean: look again. */
        (void) syscall(SYS_futex, (uint32_t *) word, FUTEX_WAIT, expected,
                       timeout_usec == UINT64_MAX ? NULL : &ts, NULL, 0);
}

void torture_futex_wake(_Atomic uint32_t *word) {
        (void) syscall(SYS_futex, (uint32_t *) word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

void torture_bump(_Atomic uint32_t *word) {
        atomic_fetch_add(word, 1);
        torture_futex_wake(word);
}

void torture_count(TortureShared *s, TortureCounter c) {
        atomic_fetch_add_explicit(&s->counters[c], 1, memory_order_relaxed);
}

void torture_atomic_max(_Atomic uint64_t *p, uint64_t v) {
        uint64_t cur = atomic_load(p);

        while (cur < v && !atomic_compare_exchange_weak(p, &cur, v))
                ;
}

void torture_violation(TortureShared *s, const char *format, ...) {
        char buf[TORTURE_MESSAGE_MAX];
        uint32_t i;
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);

        atomic_fetch_add(&s->n_violations, 1);
        i = atomic_fetch_add(&s->n_messages, 1);
        if (i < TORTURE_N_MESSAGES)
                memcpy(s->messages[i], buf, sizeof(buf));
        fprintf(stderr, "VIOLATION: %s\n", buf);
}

EnterResult torture_enter(TortureRun *run, unsigned slot, unsigned res, uint64_t token, uint32_t gen,
                          TortureScope scope, TortureMode mode, bool check_token) {
        TortureShared *s = run->shared;
        OccWord me = occ_encode(token, gen, scope, mode);
        uint64_t prev;

        if (scope == TORTURE_FD) {
                /* Dekker with the controller, which sets dead_gen before it
                 * kills a generation and then waits for fd_entering and fd
                 * occupancy of that generation to go: either we see the
                 * generation dead here, or it sees us and waits. */
                atomic_store(&s->fd_entering[slot], gen);
                if (atomic_load(&s->dead_gen) >= gen) {
                        atomic_store(&s->fd_entering[slot], 0);
                        torture_bump(&s->cs_seq);
                        return ENTER_LOST;
                }
        }

        /* Publish first, then look at the others (sequentially consistent):
         * of two conflicting entries at least the later one sees the
         * earlier, so any overlap is seen by someone. */
        atomic_store(&s->occ[res][slot], me);
        if (scope == TORTURE_FD)
                atomic_store(&s->fd_entering[slot], 0);

        for (unsigned j = 0; j < run->options->n_clients; j++) {
                OccWord o;

                if (j == slot)
                        continue;
                o = atomic_load(&s->occ[res][j]);
                if (o == 0)
                        continue;
                if (mode == TORTURE_EXCLUSIVE || occ_mode(o) == TORTURE_EXCLUSIVE)
                        torture_violation(s, "overlap on '%s': slot %u entered %s (%s, token %" PRIu64
                                          ") while slot %u is in with %s (%s, token %" PRIu64 ")",
                                          run->resources[res], slot, torture_mode_to_string(mode),
                                          torture_scope_to_string(scope), token, j,
                                          torture_mode_to_string(occ_mode(o)),
                                          torture_scope_to_string(occ_scope(o)), occ_token(o));
        }

        /* Fencing: whoever entered before us was granted before us (or
         * held while we were granted, which the overlap check or the
         * daemon's contract forbids). Shared holds granted together may
         * enter in any order, so a shared entry compares with exclusive
         * ones only. */
        if (check_token) {
                prev = atomic_load(mode == TORTURE_EXCLUSIVE ? &s->max_token_any[res] : &s->max_token_exclusive[res]);
                if (token <= prev)
                        torture_violation(s, "token order on '%s': slot %u entered %s with token %" PRIu64
                                          " after a hold with token %" PRIu64 " entered",
                                          run->resources[res], slot, torture_mode_to_string(mode), token, prev);
        }
        torture_atomic_max(&s->max_token_any[res], token);
        if (mode == TORTURE_EXCLUSIVE)
                torture_atomic_max(&s->max_token_exclusive[res], token);

        torture_count(s, CNT_CS_ENTRIES);
        return ENTER_OK;
}

void torture_exit(TortureRun *run, unsigned slot, unsigned res) {
        atomic_store(&run->shared->occ[res][slot], 0);
        torture_bump(&run->shared->cs_seq);
}
