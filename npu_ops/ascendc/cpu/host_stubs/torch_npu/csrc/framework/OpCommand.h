// Declaration stub of torch_npu's OpCommand.h (see acl/acl.h here): syntax checks only.
#pragma once
#include <functional>
#include <string>
namespace at_npu {
namespace native {
class OpCommand {
public:
    OpCommand& Name(const std::string& name);
    OpCommand& SetCustomHandler(std::function<int()> func);
    void Run();
};
}  // namespace native
}  // namespace at_npu
