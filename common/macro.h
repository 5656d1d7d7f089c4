/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Small helpers shared by the daemon, the library and the tests: scoped
 * cleanup and explicit ownership hand-over, in the style of systemd. */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _pure_ __attribute__((pure))

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved_errno = errno;
                close(*fd);
                errno = saved_errno;
        }
}
#define _cleanup_close_ _cleanup_(closep)

/* Defines name##p(type **p) calling func(*p) when *p is not NULL. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)                 \
        static inline void func##p(type *p) {                   \
                if (*p)                                         \
                        func(*p);                               \
        }

/* Returns the pointer and forgets it: ownership moves to the caller. */
#define TAKE_PTR(ptr)                                           \
        ({                                                      \
                __typeof__(ptr) *_pptr_ = &(ptr);               \
                __typeof__(ptr) _ptr_ = *_pptr_;                \
                *_pptr_ = NULL;                                 \
                _ptr_;                                          \
        })

#define TAKE_FD(fd)                                             \
        ({                                                      \
                int *_pfd_ = &(fd);                             \
                int _fd_ = *_pfd_;                              \
                *_pfd_ = -1;                                    \
                _fd_;                                           \
        })

#define UID_FMT "%" PRIu32
#define PID_FMT "%" PRIi32

/* The struct that embeds member `member` at address ptr. */
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

#define STRINGIFY(x) #x
#define STRINGIFY_VALUE(x) STRINGIFY(x)

#define streq(a, b) (strcmp((a), (b)) == 0)

/* IN_SET(x, a, b, …): x equals one of the values. */
#define IN_SET(x, first, ...)                                   \
        ({                                                      \
                const __typeof__(first) _set_[] = { first, __VA_ARGS__ }; \
                const __typeof__(x) _x_ = (x);                  \
                bool _found_ = false;                           \
                for (size_t _i_ = 0; _i_ < ELEMENTSOF(_set_); _i_++) \
                        if (_set_[_i_] == _x_) {                \
                                _found_ = true;                 \
                                break;                          \
                        }                                       \
                _found_;                                        \
        })

static inline const char *strempty(const char *s) {
        return s ? s : "";
}
