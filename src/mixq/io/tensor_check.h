// Finds the tensor that makes a model's output non-finite. The engine does not check weights
// (that would cost every load a pass over the file); the commands that evaluate a model call this
// only when a non-finite number came out, to say which tensor is to blame.
#pragma once

#include <optional>
#include <string>

#include "mixq/io/gguf.h"

namespace mixq {

// "tensor 'NAME' holds NaN (element I of N)" for the first tensor (in file order) whose decoded
// values include NaN or infinity; nullopt when every decodable tensor is finite.
std::optional<std::string> find_non_finite_tensor(const GgufFile& file);

}  // namespace mixq
