/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <glib.h>

#include "lockbus-names.h"
#include "macro.h"
#include "resource-name.h"

/* "~" and this many hex digits of SHA-256(name) end a shortened stem: 128
 * bits, so two long names collide only if SHA-256 does. */
#define STEM_HASH_CHARS 32U
#define STEM_HASH_SUFFIX_LEN (1U + STEM_HASH_CHARS)

bool resource_name_is_valid(const char *name) {
        size_t n;

        if (!name)
                return false;

        /* strnlen: a name that is far too long is not walked to its end. */
        n = strnlen(name, LOCKBUS_RESOURCE_MAX + 1);
        if (n == 0 || n > LOCKBUS_RESOURCE_MAX)
                return false;

        if (!g_utf8_validate(name, (gssize) n, NULL))
                return false;

        /* Control characters are all ASCII, so a bytewise check is enough. */
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) name[i];

                if ((c >= 0x01 && c <= 0x1f) || c == 0x7f)
                        return false;
        }

        return true;
}

static bool stem_char_is_plain(char c, bool first) {
        if (g_ascii_isalnum(c) || c == '_' || c == '-')
                return true;

        /* A leading '.' would make ".", ".." or a hidden file (the store's
         * own temp files and quarantine start with '.'). */
        return c == '.' && !first;
}

int resource_name_to_file_stem(const char *name, char **ret) {
        static const char hex[] = "0123456789ABCDEF";
        _cleanup_free_ char *stem = NULL;
        size_t n, len = 0, cut = 0;

        if (!ret)
                return -EINVAL;
        if (!resource_name_is_valid(name))
                return -EINVAL;

        n = strlen(name);

        /* Worst case every byte becomes "%XX". The name is at most 255 bytes,
         * so this is small. */
        stem = malloc(n * 3 + 1);
        if (!stem)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) name[i];

                if (stem_char_is_plain((char) c, i == 0))
                        stem[len++] = (char) c;
                else {
                        stem[len++] = '%';
                        stem[len++] = hex[c >> 4];
                        stem[len++] = hex[c & 0xf];
                }

                /* Remember the last boundary between escapes that still
                 * leaves room for the hash suffix: a cut there never splits
                 * a "%XX". */
                if (len <= RESOURCE_FILE_STEM_MAX - STEM_HASH_SUFFIX_LEN)
                        cut = len;
        }
        stem[len] = '\0';

        if (len > RESOURCE_FILE_STEM_MAX) {
                g_autofree char *sum = NULL;

                /* Short stems never contain '~' (it is escaped as "%7E"), so
                 * a shortened stem can never equal an unshortened one; the
                 * hash is of the whole name, so two long names that share
                 * the kept prefix still differ. */
                sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, (gssize) n);
                if (!sum)
                        return -ENOMEM;

                stem[cut] = '~';
                memcpy(stem + cut + 1, sum, STEM_HASH_CHARS);
                stem[cut + STEM_HASH_SUFFIX_LEN] = '\0';
        }

        *ret = TAKE_PTR(stem);
        return 0;
}
