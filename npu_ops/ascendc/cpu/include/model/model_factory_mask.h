/**
 * Stand-in for CANN's model/model_factory_mask.h (binary-only): the API parameter checks
 * read the vector mask registers through these; they read our model's registers
 * (include/cce_vec_models.h).
 */
#ifndef GSA_CPU_MODEL_FACTORY_MASK_H
#define GSA_CPU_MODEL_FACTORY_MASK_H

#include <cstdint>

#include "stub_fun.h"

inline uint64_t ModelFactoryGetMaskHigh() { return gsa_cpu::Regs().maskHi; }
inline uint64_t ModelFactoryGetMaskLow() { return gsa_cpu::Regs().maskLo; }
/** 0: normal (bit) mode, 1: counter mode. */
inline uint64_t ModelFactoryGetMaskMode() { return gsa_cpu::Regs().counterMode ? 1 : 0; }

#endif  // GSA_CPU_MODEL_FACTORY_MASK_H
