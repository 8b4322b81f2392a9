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

// Whether load_model interleaves by default: yes unless the environment has MIXQ_REPACK=0.
bool interleave_by_default();

// Loads the file as the architecture it names. Throws std::runtime_error naming the file and the
// supported architectures when it names none or an unknown one, or when the model is malformed.
// interleave: the decode layouts in place (Model::repack_for_decode with best_kernels(); a no-op
// where that set has no interleaved kernels, and for matrices another load interleaved already).
std::unique_ptr<Model> load_model(const GgufFile& file, bool interleave = interleave_by_default());

// The names load_model accepts.
std::vector<std::string> supported_architectures();

}  // namespace mixq
