// Declaration stub of CANN's acl/acl.h: only what op_host/gsa_torch_npu.cpp uses, so that g++
// can syntax-check that file without CANN (build_and_test.sh). Signatures as CANN documents
// them; nothing here is linked or run.
#pragma once
#include <cstdint>
using aclError = int;
constexpr aclError ACL_SUCCESS = 0;
enum aclDeviceInfo { ACL_DEVICE_INFO_AI_CORE_NUM = 0, ACL_DEVICE_INFO_VECTOR_CORE_NUM = 1 };
aclError aclrtGetDevice(int32_t* deviceId);
aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo deviceInfo, int64_t* value);
