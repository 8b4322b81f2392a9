// The architectures the engine runs, chosen from a GGUF file's `general.architecture`.
// Adding one: its graph file (a Model and a Context, see engine/model.h) and one row in
// registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mixq/engine/model.h"
#include "mixq/io/gguf.h"

namespace mixq {

// Loads the file as the architecture it names. Throws std::runtime_error naming the file and the
// supported architectures when it names none or an unknown one, or when the model is malformed.
std::unique_ptr<Model> load_model(const GgufFile& file);

// The names load_model accepts.
std::vector<std::string> supported_architectures();

}  // namespace mixq
