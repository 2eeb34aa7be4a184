/**
 * Stand-in for CANN's dlog_pub.h (the device-log library, binary-only): the API parameter
 * checks (asc-tools/cpudebug/src/api_check) report through dlog_error / dlog_warn; here
 * errors and warnings go to stderr, info and debug are dropped.
 */
#ifndef GSA_CPU_DLOG_PUB_H
#define GSA_CPU_DLOG_PUB_H

#include <cstdio>

#define ASCENDCKERNEL 0
#define DLOG_DEBUG 0
#define DLOG_INFO 1
#define DLOG_WARN 2
#define DLOG_ERROR 3

inline int CheckLogLevel(int, int level) { return level >= DLOG_WARN; }
#define DlogRecord(mod, level, fmt, ...) std::fprintf(stderr, "[dlog %d] " fmt "\n", level, ##__VA_ARGS__)
#define dlog_error(mod, fmt, ...) std::fprintf(stderr, "[ERROR] " fmt, ##__VA_ARGS__)
#define dlog_warn(mod, fmt, ...) std::fprintf(stderr, "[WARNING] " fmt, ##__VA_ARGS__)
#define dlog_info(mod, fmt, ...) ((void)0)
#define dlog_debug(mod, fmt, ...) ((void)0)

#endif  // GSA_CPU_DLOG_PUB_H
