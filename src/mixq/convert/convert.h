// `mixq convert`: any supported model file into GGUF. The input's format is detected:
//   a file starting with "GGUF"  -> GGUF (type changes only, gguf_convert.h)
//   a file starting with "ggmf"  -> rwkv.cpp's legacy format (rwkv_cpp.h)
//   a directory with config.json -> a Hugging Face safetensors model (safetensors.h)
//   anything else                -> a llama2.c checkpoint (llama2c.h) + tokenizer.bin
// Every output goes through GgufWriter and so AtomicFile (io/atomic_file.h); bad input throws
// std::runtime_error (or GgufError / TypeError) saying what is wrong and where.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mixq/convert/rwkv_layout.h"
#include "mixq/formats/type_table.h"

namespace mixq {

class TemporaryPath;

enum class ModelFormat { Gguf, RwkvCpp, Llama2c, SafetensorsDir };

// Throws for a directory without config.json and for a lone .safetensors file.
ModelFormat detect_model_format(const std::filesystem::path& input);
const char* model_format_name(ModelFormat f);

struct ConvertRequest {
  std::filesystem::path input, output;
  std::optional<TypeId> outtype;    // F32 / F16 / BF16; nullopt keeps the input's types
  std::filesystem::path tokenizer;  // llama2.c: tokenizer.bin (default: beside the checkpoint)
};

struct ConvertResult {
  ModelFormat format;
  size_t tensors = 0;
  uint64_t bytes_written = 0;
  std::vector<std::string> warnings;  // the file was written, but something may not behave as the original
};

ConvertResult convert_to_gguf(const ConvertRequest& req);
// The same, then the RWKV-7 tensors in `layout` (rwkv.cpp's or llama.cpp's names, rwkv_layout.h).
ConvertResult convert_to_gguf(const ConvertRequest& req, RwkvLayout layout);

// A GGUF view of any supported input: the input itself when it is GGUF, otherwise a conversion
// (F32 matrices) written to a temporary file beside `near`, removed when this object goes away.
// Lets `mixq quantize` take llama2.c and rwkv.cpp files directly.
class GgufSource {
 public:
  GgufSource(const std::filesystem::path& input, const std::filesystem::path& near,
             const std::filesystem::path& tokenizer = {});
  ~GgufSource();
  GgufSource(const GgufSource&) = delete;
  GgufSource& operator=(const GgufSource&) = delete;
  const std::filesystem::path& path() const { return path_; }
  ModelFormat format() const { return format_; }

 private:
  std::filesystem::path path_;
  ModelFormat format_;
  std::unique_ptr<TemporaryPath> temporary_;
};

}  // namespace mixq
