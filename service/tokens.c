/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <glib.h>

#include "tokens.h"

struct TokenIssuer {
        Store *store;           /* borrowed */
        uint64_t last;          /* last token issued (or the floor) */
        uint64_t reserved;      /* may issue up to this one without touching the disk */
};

int token_issuer_new(Store *store, uint64_t floor, TokenIssuer **ret) {
        uint64_t reservation;
        TokenIssuer *t;
        int r;

        r = store_read_token_reservation(store, &reservation);
        if (r < 0)
                return r;

        t = g_new0(TokenIssuer, 1);
        t->store = store;
        /* Everything up to the old reservation may have been handed out
         * before a crash: start above it. Nothing is reserved for this run
         * yet, so the first token reserves a fresh range. */
        t->last = MAX(reservation, floor);
        t->reserved = t->last;
        *ret = t;
        return 0;
}

TokenIssuer *token_issuer_free(TokenIssuer *t) {
        g_free(t);
        return NULL;
}

int token_issuer_next(TokenIssuer *t, uint64_t *ret) {
        int r;

        if (t->last == UINT64_MAX)
                return -EOVERFLOW;

        /* Also when someone removed or replaced the file meanwhile. */
        if (t->last >= t->reserved || !store_token_reservation_intact(t->store)) {
                uint64_t upto = t->last + MIN((uint64_t) TOKEN_RESERVATION_BLOCK, UINT64_MAX - t->last);

                r = store_write_token_reservation(t->store, upto);
                if (r < 0)
                        return r;
                t->reserved = upto;
        }

        *ret = ++t->last;
        return 0;
}

int token_issuer_rewrite(TokenIssuer *t) {
        /* Nothing reserved yet: the next token writes it anyway. */
        if (t->reserved == 0)
                return 0;
        return store_write_token_reservation(t->store, t->reserved);
}

uint64_t token_issuer_last(const TokenIssuer *t) {
        return t->last;
}
