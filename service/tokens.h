/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The TokenIssuer hands out fencing tokens: strictly increasing over every
 * grant the lock directory ever saw, also across crashes and restarts.
 *
 * It reserves ranges durably before using them: the store records "tokens up
 * to N may have been handed out"; after a crash the next start begins above
 * N, so a token is never reused, at the cost of skipping the unused rest of
 * a range. */

#include <stdint.h>

#include "macro.h"
#include "store.h"

#define TOKEN_RESERVATION_BLOCK 1024U

typedef struct TokenIssuer TokenIssuer;

/* Reads the reservation from the store. `floor` is the largest token known
 * to exist (e.g. of reloaded holds); tokens issued are above it too.
 * -EBADMSG if the reservation cannot be read: refusing to start is the only
 * safe answer then. */
int token_issuer_new(Store *store, uint64_t floor, TokenIssuer **ret);
TokenIssuer *token_issuer_free(TokenIssuer *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(TokenIssuer *, token_issuer_free);

/* The next token. Reserves a new range first when the current one is used
 * up or its file is gone; a failure to store it returns a negative errno
 * and issues nothing (-ENOENT: the lock directory was removed). */
int token_issuer_next(TokenIssuer *t, uint64_t *ret);

/* Writes the current reservation again (e.g. into a directory created
 * again after it was removed). */
int token_issuer_rewrite(TokenIssuer *t);

/* The last token issued or known (0 if none). */
uint64_t token_issuer_last(const TokenIssuer *t);
