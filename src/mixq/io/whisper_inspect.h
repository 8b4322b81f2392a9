// `mixq inspect` on a whisper.cpp model file: hyperparameters, mel filters, vocabulary size and the
// per-tensor table (shape, type, bytes, bits per weight), as text or JSON, and whether stock
// whisper.cpp loads the file (one weight type, io/whisper_file.h).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "mixq/io/whisper_file.h"

namespace mixq {

std::string whisper_inspect_text(const WhisperFile& f, bool show_tensors = true);
nlohmann::ordered_json whisper_inspect_json(const WhisperFile& f);

}  // namespace mixq
