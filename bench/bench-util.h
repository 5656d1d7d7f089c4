/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What every part of the harness shares: the clock, a latency histogram,
 * reading and writing whole buffers, privilege dropping, and a small JSON
 * writer for the one result line each run prints.
 *
 * Clock: CLOCK_MONOTONIC in nanoseconds, the same in every process, so two
 * processes can compare their time stamps (handoff latency).
 *
 * Histogram: log-linear buckets over nanoseconds (64 per power of two,
 * values below 64 ns exact), so any percentile is within 1.6 % of the true
 * value; fixed size, so client processes send theirs through a pipe and the
 * parent merges them. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "macro.h"

#define NSEC_PER_USEC 1000ULL
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC  1000000000ULL
#define USEC_PER_SEC  1000000ULL

uint64_t now_ns(void);

#define HISTOGRAM_SUB_BITS 6
#define HISTOGRAM_SUB (1U << HISTOGRAM_SUB_BITS)
#define HISTOGRAM_BUCKETS ((64U - HISTOGRAM_SUB_BITS + 1U) * HISTOGRAM_SUB)

typedef struct Histogram {
        uint64_t count;
        uint64_t sum_ns;
        uint64_t min_ns;
        uint64_t max_ns;
        uint64_t buckets[HISTOGRAM_BUCKETS];
} Histogram;

void histogram_init(Histogram *h);
void histogram_add(Histogram *h, uint64_t ns);
void histogram_merge(Histogram *into, const Histogram *from);
/* The value below which a fraction q (0..1) of the samples lie, in ns (the
 * middle of its bucket); 0 for an empty histogram. */
uint64_t histogram_quantile(const Histogram *h, double q);
double histogram_mean_ns(const Histogram *h);

/* Whole-buffer I/O on blocking fds, retrying EINTR and short transfers.
 * read_full() returns 0, -EPIPE on EOF before size bytes, or -errno. */
int write_full(int fd, const void *data, size_t size);
int read_full(int fd, void *data, size_t size);

/* Drops this process to uid:uid (gid = uid, no supplementary groups), for
 * clients that should look like other users to the service. */
int drop_privileges(uid_t uid);

/* Raises RLIMIT_NOFILE (soft and, as root, hard) to at least n. */
int raise_fd_limit(uint64_t n);

/* CPU time a process (all its threads) has run, in ns, from
 * /proc/PID/task/TID/schedstat; a negative errno if it cannot be read. */
int64_t process_cpu_ns(pid_t pid);

/* VmRSS of a process in KiB, or a negative errno. */
int64_t process_rss_kib(pid_t pid);

/* Prints a message to stderr, prefixed with the program's name. */
void bench_log(const char *format, ...) _printf_(1, 2);

/* One JSON object on one line: json_begin(), fields, json_end(). Strings
 * are escaped; doubles print with 6 significant digits (NaN/inf as null). */
typedef struct JsonWriter {
        FILE *f;
        bool first;
} JsonWriter;

/* If set (lockbus-bench --tag=), json_end() adds "tag": json_tag to every
 * object: runs made under other conditions (e.g. pinned to one CPU) stay
 * apart from the ordinary ones in the raw lines. */
extern const char *json_tag;

void json_begin(JsonWriter *j, FILE *f);
void json_string(JsonWriter *j, const char *key, const char *value);
void json_uint(JsonWriter *j, const char *key, uint64_t value);
void json_int(JsonWriter *j, const char *key, int64_t value);
void json_double(JsonWriter *j, const char *key, double value);
void json_bool(JsonWriter *j, const char *key, bool value);
/* A histogram's count, mean, p50, p90, p99 and max, as <prefix>_p50_us etc. */
void json_histogram(JsonWriter *j, const char *prefix, const Histogram *h);
void json_end(JsonWriter *j);
