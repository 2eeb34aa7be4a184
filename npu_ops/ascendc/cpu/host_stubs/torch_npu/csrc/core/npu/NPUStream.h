// Declaration stub of torch_npu's NPUStream.h (see acl/acl.h here): syntax checks only.
#pragma once
namespace c10_npu {
struct NPUStream {
    void* stream() const;
};
NPUStream getCurrentNPUStream(int device_index = -1);
}  // namespace c10_npu
