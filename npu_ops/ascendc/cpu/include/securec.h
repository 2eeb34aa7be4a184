/**
 * Stand-in for Huawei's securec.h (the bounds-checked libc wrappers CANN ships in binary
 * form): the five functions the cpudebug framework calls, with their documented
 * contract (0 = EOK on success, non-zero and no overflow on a too-small destination).
 */
#ifndef GSA_CPU_SECUREC_H
#define GSA_CPU_SECUREC_H

#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>

typedef int errno_t;
#ifndef EOK
#define EOK 0
#endif

inline errno_t memset_s(void* dest, size_t destMax, int c, size_t count)
{
    if (dest == nullptr || count > destMax) return 1;
    std::memset(dest, c, count);
    return EOK;
}
inline errno_t memcpy_s(void* dest, size_t destMax, const void* src, size_t count)
{
    if (dest == nullptr || src == nullptr || count > destMax) return 1;
    std::memmove(dest, src, count);
    return EOK;
}
inline errno_t strcpy_s(char* dest, size_t destMax, const char* src)
{
    if (dest == nullptr || src == nullptr || std::strlen(src) + 1 > destMax) return 1;
    std::memcpy(dest, src, std::strlen(src) + 1);
    return EOK;
}
/** Returns the characters written, or -1 if they (plus the NUL) do not fit in min(destMax, count + 1). */
inline int snprintf_s(char* dest, size_t destMax, size_t count, const char* fmt, ...)
{
    if (dest == nullptr || destMax == 0) return -1;
    const size_t cap = count + 1 < destMax ? count + 1 : destMax;
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(dest, cap, fmt, ap);
    va_end(ap);
    return (n < 0 || static_cast<size_t>(n) >= cap) ? -1 : n;
}
inline int sprintf_s(char* dest, size_t destMax, const char* fmt, ...)
{
    if (dest == nullptr || destMax == 0) return -1;
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(dest, destMax, fmt, ap);
    va_end(ap);
    return (n < 0 || static_cast<size_t>(n) >= destMax) ? -1 : n;
}

#endif  // GSA_CPU_SECUREC_H
