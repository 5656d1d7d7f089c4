/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Resource-name rules (DESIGN.md): 1–255 bytes of valid UTF-8 without ASCII
 * control characters (0x01–0x1f, 0x7f). '/', "..", spaces and non-ASCII are
 * valid and must never let a name reach outside the lock directory.
 *
 * The file-name escaping maps every valid resource name to a single path
 * component that:
 *   - is made only of [A-Za-z0-9_.-], '%' escapes and at most one '~';
 *   - never starts with '.' (so it is never ".", ".." or a hidden file);
 *   - never contains '/' or '@' (the store appends "@TOKEN" to it);
 *   - is at most RESOURCE_FILE_STEM_MAX bytes: long names are cut and get
 *     '~' plus a SHA-256 prefix of the whole name, so distinct names give
 *     distinct stems.
 * It is deterministic and not meant to be reversed: the hold file holds the
 * real name. */

#include <stdbool.h>
#include <stddef.h>

#define RESOURCE_FILE_STEM_MAX 200U

/* True if name is a valid resource name. */
bool resource_name_is_valid(const char *name);

/* Escapes a valid resource name into a file-name stem (see above).
 * Returns 0 and a newly allocated string (free()), -EINVAL for an invalid
 * name, -ENOMEM. */
int resource_name_to_file_stem(const char *name, char **ret);
