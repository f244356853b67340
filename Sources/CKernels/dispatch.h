// Run-time dispatch for kernels compiled once per level (name_generic, name_avx2,
// name_avx512): the widest copy tessera_cpu_level() allows.
#ifndef TESSERA_DISPATCH_H
#define TESSERA_DISPATCH_H
#include "ckernels.h"

#define DISPATCH(name, ...)                                                        \
    do {                                                                           \
        int l_ = tessera_cpu_level();                                              \
        if (l_ >= 2) name##_avx512(__VA_ARGS__);                                   \
        else if (l_ == 1) name##_avx2(__VA_ARGS__);                                \
        else name##_generic(__VA_ARGS__);                                          \
    } while (0)
#define SELECT(name) (tessera_cpu_level() >= 2 ? name##_avx512 : tessera_cpu_level() == 1 ? name##_avx2 : name##_generic)

#define LEVEL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LEVEL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

#endif
