// `mixq inspect`: a GGUF file's metadata and per-tensor table, as text or JSON.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "mixq/io/gguf.h"

namespace mixq {

struct InspectOptions {
  size_t max_array_elems = 8;  // longer metadata arrays are elided in the text form
  bool show_metadata = true;
  bool show_tensors = true;
};

std::string inspect_text(const GgufFile& f, const InspectOptions& opts = {});
nlohmann::ordered_json inspect_json(const GgufFile& f);

}  // namespace mixq
