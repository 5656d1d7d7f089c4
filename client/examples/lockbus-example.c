/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* lockbus-example: takes a lock, shows who holds it, unlocks it.
 *
 *   cc lockbus-example.c -o lockbus-example $(pkg-config --cflags --libs lockbus)
 *   ./lockbus-example [RESOURCE]
 *
 * It waits up to 5 s if someone else holds RESOURCE (default "example").
 * On failure it prints the service's own message, which names the
 * resource and its holder. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <lockbus.h>

/* Prints why a call failed: the service's message if it sent one. */
static int fail(lockbus *l, const char *what, int r) {
        const char *message = l ? lockbus_last_error_message(l) : NULL;

        fprintf(stderr, "%s failed: %s\n", what, message ? message : strerror(-r));
        return 1;
}

int main(int argc, char *argv[]) {
        __attribute__((cleanup(lockbus_unrefp))) lockbus *l = NULL;
        const char *resource = argc > 1 ? argv[1] : "example";
        lockbus_options options = LOCKBUS_OPTIONS_INIT;
        lockbus_holder *holders = NULL;
        uint64_t token;
        size_t n;
        int r;

        r = lockbus_open_system(&l);
        if (r < 0)
                return fail(NULL, "Connecting to the system bus", r);

        /* A connection-scope lock (the default): released when we exit. */
        options.timeout_usec = 5 * 1000 * 1000;
        options.description = "lockbus example";
        r = lockbus_lock(l, resource, &options, &token);
        if (r < 0)
                return fail(l, "Lock", r);
        printf("Locked '%s', fencing token %" PRIu64 ".\n", resource, token);

        r = lockbus_owner(l, resource, &holders, &n);
        if (r < 0)
                return fail(l, "Owner", r);
        for (size_t i = 0; i < n; i++)
                printf("Held %s by uid %u (pid %d, %s), scope %s: %s\n",
                       lockbus_mode_to_string(holders[i].mode), (unsigned) holders[i].uid,
                       (int) holders[i].pid, holders[i].comm, lockbus_scope_to_string(holders[i].scope),
                       holders[i].description);
        lockbus_holders_free(holders, n);

        /* Locks are not re-entrant: asking again fails at once. */
        options.timeout_usec = 0;
        r = lockbus_lock(l, resource, &options, NULL);
        if (r == -EBUSY)
                printf("Locking again fails with EBUSY: %s\n", lockbus_last_error_message(l));
        else
                fprintf(stderr, "Locking again did not fail with EBUSY: %s\n", strerror(r < 0 ? -r : 0));

        r = lockbus_unlock(l, resource);
        if (r < 0)
                return fail(l, "Unlock", r);
        printf("Unlocked '%s'.\n", resource);
        return 0;
}
