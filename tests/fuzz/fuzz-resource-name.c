/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Fuzz target: resource_name_is_valid() and resource_name_to_file_stem().
 * The input, up to its first NUL, is the name. Checked on every input:
 *   - validity agrees with an independent reading of the rule (DESIGN.md):
 *     1–255 bytes, UTF-8 as in RFC 3629, no ASCII control character;
 *   - an invalid name gets -EINVAL and no stem;
 *   - a valid name gets a stem with the properties resource-name.h
 *     promises: [A-Za-z0-9_.-], complete "%XX" escapes and at most one '~';
 *     no '/', no '@', no leading '.'; at most RESOURCE_FILE_STEM_MAX bytes;
 *     the same stem every time;
 *   - distinct names give distinct stems: a stem without '~' unescapes back
 *     to the name (so no two names share it), and a shortened one is a
 *     prefix of that escaping, '~' and the first 32 hex digits of
 *     SHA-256(name), and only names whose escaping is too long get one (so
 *     it never equals an unshortened stem). */

#include <errno.h>
#include <string.h>

#include <glib.h>

#include "fuzz.h"
#include "lockbus-names.h"
#include "macro.h"
#include "resource-name.h"

#define HASH_CHARS 32U

static bool is_plain(unsigned char c, bool first) {
        return g_ascii_isalnum(c) || c == '_' || c == '-' || (c == '.' && !first);
}

/* RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_is_valid(const unsigned char *s, size_t n) {
        for (size_t i = 0; i < n;) {
                unsigned char c = s[i];
                size_t len;
                uint32_t cp, min;

                if (c < 0x80) {
                        i++;
                        continue;
                }
                if ((c & 0xe0) == 0xc0) {
                        len = 2;
                        cp = c & 0x1f;
                        min = 0x80;
                } else if ((c & 0xf0) == 0xe0) {
                        len = 3;
                        cp = c & 0x0f;
                        min = 0x800;
                } else if ((c & 0xf8) == 0xf0) {
                        len = 4;
                        cp = c & 0x07;
                        min = 0x10000;
                } else
                        return false;

                if (n - i < len)
                        return false;
                for (size_t k = 1; k < len; k++) {
                        if ((s[i + k] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[i + k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += len;
        }
        return true;
}

static bool name_is_valid(const char *name) {
        size_t n = strlen(name);

        if (n == 0 || n > LOCKBUS_RESOURCE_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) name[i];

                if (c < 0x20 || c == 0x7f)
                        return false;
        }
        return utf8_is_valid((const unsigned char *) name, n);
}

/* Length of the name fully escaped, before any shortening. */
static size_t escaped_length(const char *name) {
        size_t len = 0;

        for (size_t i = 0; name[i]; i++)
                len += is_plain((unsigned char) name[i], i == 0) ? 1 : 3;
        return len;
}

/* Undoes the escaping of stem[0..n): NULL if it is not a well-formed
 * escaping (a character outside the set, a cut or lower-case escape). */
static char *unescape(const char *stem, size_t n) {
        g_autoptr(GString) s = g_string_new(NULL);

        for (size_t i = 0; i < n; i++) {
                char c = stem[i];

                if (c == '%') {
                        if (i + 2 >= n)
                                return NULL;
                        if (!g_ascii_isxdigit(stem[i + 1]) || g_ascii_islower(stem[i + 1]) ||
                            !g_ascii_isxdigit(stem[i + 2]) || g_ascii_islower(stem[i + 2]))
                                return NULL;
                        g_string_append_c(s, (char) (g_ascii_xdigit_value(stem[i + 1]) << 4 |
                                                     g_ascii_xdigit_value(stem[i + 2])));
                        i += 2;
                } else if (is_plain((unsigned char) c, i == 0))
                        g_string_append_c(s, c);
                else
                        return NULL;
        }
        return g_string_free(g_steal_pointer(&s), false);
}

static void check_stem(const char *name, const char *stem) {
        size_t n = strlen(stem);
        const char *tilde;

        fuzz_assert(n > 0);
        fuzz_assert(n <= RESOURCE_FILE_STEM_MAX);
        fuzz_assert(stem[0] != '.');
        fuzz_assert(!strchr(stem, '/'));
        fuzz_assert(!strchr(stem, '@'));

        tilde = strchr(stem, '~');
        if (!tilde) {
                g_autofree char *back = unescape(stem, n);

                /* Reversible, hence distinct for distinct names. */
                fuzz_assert(back);
                fuzz_assert(streq(back, name));
                fuzz_assert(escaped_length(name) == n);
                return;
        }

        /* Shortened: only when the full escaping does not fit. */
        fuzz_assert(escaped_length(name) > RESOURCE_FILE_STEM_MAX);
        fuzz_assert(!strchr(tilde + 1, '~'));

        size_t kept = (size_t) (tilde - stem);
        g_autofree char *prefix = unescape(stem, kept);
        g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, -1);

        fuzz_assert(prefix);
        fuzz_assert(g_str_has_prefix(name, prefix));
        fuzz_assert(strlen(tilde + 1) == HASH_CHARS);
        fuzz_assert(strncmp(tilde + 1, sum, HASH_CHARS) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        g_autofree char *name = g_strndup((const char *) data, size);
        _cleanup_free_ char *stem = NULL, *again = NULL;
        bool valid;
        int r;

        valid = resource_name_is_valid(name);
        fuzz_assert(valid == name_is_valid(name));

        r = resource_name_to_file_stem(name, &stem);
        if (!valid) {
                fuzz_assert(r == -EINVAL);
                fuzz_assert(!stem);
                return 0;
        }
        fuzz_assert(r == 0);
        fuzz_assert(stem);
        check_stem(name, stem);

        /* Deterministic. */
        fuzz_assert(resource_name_to_file_stem(name, &again) == 0);
        fuzz_assert(streq(stem, again));

        return 0;
}
