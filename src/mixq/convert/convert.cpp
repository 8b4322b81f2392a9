#include "mixq/convert/convert.h"

#include <cstring>
#include <fstream>
#include <stdexcept>

#include <unistd.h>

#include <fmt/format.h>

#include "mixq/convert/gguf_convert.h"
#include "mixq/convert/llama2c.h"
#include "mixq/convert/rwkv_cpp.h"
#include "mixq/convert/hf_convert.h"
#include "mixq/io/atomic_file.h"

namespace mixq {

namespace fs = std::filesystem;

ModelFormat detect_model_format(const fs::path& input) {
  if (fs::is_directory(input)) {
    if (!fs::exists(input / "config.json")) {
      throw std::runtime_error(fmt::format("'{}' is a directory without config.json: not a Hugging Face model directory",
                                           input.string()));
    }
    return ModelFormat::SafetensorsDir;
  }
  std::ifstream f(input, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("cannot open '{}'", input.string()));
  unsigned char head[9] = {};
  f.read(reinterpret_cast<char*>(head), sizeof head);
  if (std::memcmp(head, "GGUF", 4) == 0) return ModelFormat::Gguf;
  uint32_t word;
  std::memcpy(&word, head, 4);
  if (word == kRwkvCppMagic) return ModelFormat::RwkvCpp;
  // A lone .safetensors file (u64 header length, then a JSON object) lacks the config and the
  // tokenizer a conversion needs.
  uint64_t header_len;
  std::memcpy(&header_len, head, 8);
  if (f.gcount() == sizeof head && head[8] == '{' && header_len < fs::file_size(input)) {
    throw std::runtime_error(fmt::format("'{}' is a single safetensors file: convert its directory (with config.json "
                                         "and tokenizer.json) instead",
                                         input.string()));
  }
  return ModelFormat::Llama2c;
}

const char* model_format_name(ModelFormat f) {
  switch (f) {
    case ModelFormat::Gguf: return "GGUF";
    case ModelFormat::RwkvCpp: return "rwkv.cpp";
    case ModelFormat::Llama2c: return "llama2.c";
    case ModelFormat::SafetensorsDir: return "safetensors directory";
  }
  return "?";
}

namespace {

fs::path default_tokenizer(const fs::path& checkpoint) {
  for (const char* name : {"tokenizer.bin", "tok512.bin"}) {
    const fs::path p = checkpoint.parent_path() / name;
    if (fs::exists(p)) return p;
  }
  throw std::runtime_error(fmt::format("no tokenizer for the llama2.c checkpoint '{}': pass --tokenizer "
                                       "tokenizer.bin (none found beside it)",
                                       checkpoint.string()));
}

}  // namespace

ConvertResult convert_to_gguf(const ConvertRequest& req, RwkvLayout layout) {
  // Convert as usual (unless the input already is GGUF in the wanted types), then relayout.
  ConvertResult r;
  r.format = detect_model_format(req.input);
  const bool direct = r.format == ModelFormat::Gguf && !req.outtype;
  ConvertRequest first = req;
  first.output += fmt::format(".mixq-layout-{}.gguf", ::getpid());
  if (!direct) r.warnings = convert_to_gguf(first).warnings;
  try {
    r.tensors = convert_rwkv_layout(GgufFile::open(direct ? req.input : first.output), req.output, layout);
  } catch (...) {
    if (!direct) fs::remove(first.output);
    throw;
  }
  if (!direct) fs::remove(first.output);
  r.bytes_written = fs::file_size(req.output);
  return r;
}

ConvertResult convert_to_gguf(const ConvertRequest& req) {
  if (req.outtype && *req.outtype != TypeId::F32 && *req.outtype != TypeId::F16 && *req.outtype != TypeId::BF16) {
    throw TypeError(fmt::format("convert writes f32, f16 or bf16, not {}; use `mixq quantize` for block types",
                                type_traits(*req.outtype).name));
  }
  ConvertResult r;
  r.format = detect_model_format(req.input);
  std::optional<uint64_t> written;
  switch (r.format) {
    case ModelFormat::Gguf: {
      const auto stats = convert_gguf(GgufFile::open(req.input), req.output, req.outtype);
      r.tensors = stats.tensors;
      written = stats.bytes_written;
      break;
    }
    case ModelFormat::RwkvCpp:
      r.tensors = convert_rwkv_cpp(req.input, req.output, req.outtype);
      break;
    case ModelFormat::Llama2c:
      r.tensors = convert_llama2c(req.input, req.tokenizer.empty() ? default_tokenizer(req.input) : req.tokenizer,
                                  req.output, req.outtype);
      break;
    case ModelFormat::SafetensorsDir:
      r.tensors = convert_safetensors_dir(req.input, req.output, req.outtype, r.warnings);
      break;
  }
  if (!written) {
    // A FIFO or a device has no size to read back.
    std::error_code ec;
    const auto size = fs::file_size(req.output, ec);
    written = ec ? 0 : size;
  }
  r.bytes_written = *written;
  return r;
}

GgufSource::GgufSource(const fs::path& input, const fs::path& near, const fs::path& tokenizer)
    : path_(input), format_(detect_model_format(input)) {
  if (format_ == ModelFormat::Gguf) return;
  // Registered before it exists: an interruption during the conversion or anything after it
  // removes it (io/atomic_file.h).
  temporary_ = std::make_unique<TemporaryPath>(near, "-src.gguf");
  path_ = temporary_->path();
  convert_to_gguf({input, path_, std::nullopt, tokenizer});
}

GgufSource::~GgufSource() = default;

}  // namespace mixq
