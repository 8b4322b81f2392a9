#include "mixq/convert/rwkv_cpp.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mixq/io/byte_cursor.h"
#include "mixq/io/gguf.h"
#include "mixq/io/mapped_file.h"
#include "mixq/io/rwkv_vocab.h"

namespace mixq {

namespace {

// rwkv.cpp's type numbers (4-6 were formats ggml dropped).
std::optional<TypeId> ggml_type_of(int32_t t) {
  switch (t) {
    case 0: return TypeId::F32;
    case 1: return TypeId::F16;
    case 2: return TypeId::Q4_0;
    case 3: return TypeId::Q4_1;
    case 7: return TypeId::Q5_0;
    case 8: return TypeId::Q5_1;
    case 9: return TypeId::Q8_0;
    default: return std::nullopt;
  }
}

struct RwkvTensor {
  std::string name;
  std::vector<int64_t> shape;
  const TypeTraits* type;
  const uint8_t* data;
  size_t nbytes;
};

}  // namespace

size_t convert_rwkv_cpp(const std::filesystem::path& input, const std::filesystem::path& out,
                        std::optional<TypeId> outtype) {
  const MappedFile f(input);
  ByteCursor in(f.bytes(), input.string() + ": not a valid rwkv.cpp model");
  if (in.read<uint32_t>("the magic") != kRwkvCppMagic) in.fail("wrong magic");
  const auto version = in.read<int32_t>("the version");
  if (version != 100 && version != 101) in.fail(fmt::format("unsupported file version {}", version));
  const auto n_vocab = in.read<int32_t>("the header"), n_embed = in.read<int32_t>("the header"),
             n_layer = in.read<int32_t>("the header");
  // The file's overall data type; each tensor carries its own, so it is only recorded.
  const auto data_type = in.read<int32_t>("the header");
  if (n_vocab <= 0 || n_embed <= 0 || n_layer <= 0) in.fail("non-positive hyperparameters");

  std::vector<RwkvTensor> tensors;
  while (!in.at_end()) {
    const auto n_dims = in.read<int32_t>("a tensor header"), name_len = in.read<int32_t>("a tensor header"),
               type = in.read<int32_t>("a tensor header");
    if (n_dims < 1 || n_dims > 4) in.fail(fmt::format("a tensor with {} dimensions", n_dims));
    RwkvTensor t;
    int64_t n = 1;
    for (int d = 0; d < n_dims; ++d) {
      const auto ne = in.read<int32_t>("a tensor shape");
      if (ne <= 0 || n > (int64_t{1} << 40) / ne) in.fail("a dimension out of range");
      t.shape.push_back(ne);
      n *= ne;
    }
    if (name_len <= 0) in.fail("a bad tensor name length");
    t.name = in.take_string(static_cast<size_t>(name_len), "a tensor name");
    const auto ggml = ggml_type_of(type);
    if (!ggml) in.fail(fmt::format("tensor '{}' has unsupported type {}", t.name, type));
    t.type = &type_traits(*ggml);
    // Version 101 came with ggml's May 2023 change of every quantized block layout; a version 100
    // file's quantized bytes are in the old layouts, which no current reader decodes.
    if (version == 100 && t.type->quantized) {
      in.fail(fmt::format("tensor '{}' is {} in a version 100 file (ggml's old quantized layouts): re-quantize it "
                          "with a current rwkv.cpp, or convert its FP32/FP16 source",
                          t.name, t.type->name));
    }
    if (!t.type->fits_row(t.shape[0])) in.fail(fmt::format("tensor '{}' rows do not fill {} blocks", t.name, t.type->name));
    t.nbytes = t.type->row_bytes(t.shape[0]) * static_cast<size_t>(n / t.shape[0]);
    t.data = in.take(t.nbytes, "tensor data").data();
    tensors.push_back(std::move(t));
  }

  auto find = [&](std::string_view name) -> const RwkvTensor* {
    for (const auto& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  // The architecture from the tensors each generation introduced.
  auto has = [&](const char* part) {
    for (const auto& t : tensors) {
      if (t.name.find(part) != std::string::npos) return true;
    }
    return false;
  };
  const std::string arch = has("att.w0") ? "rwkv7" : has("time_maa") ? "rwkv6" : has("time_faaaa") ? "rwkv5" : "rwkv4";

  // Tensor names stay as rwkv.cpp (and the PyTorch checkpoints) spell them ("emb.weight",
  // "blocks.N.att.key.weight", "head.weight"): llama.cpp's RWKV graphs expect fused and reshaped
  // tensors under other names, which is a change of model layout, not of file format.
  GgufWriter w(out);
  w.set("general.architecture", GgufValue::string(arch));
  w.set("general.name", GgufValue::string(input.stem().string()));
  w.set(arch + ".block_count", GgufValue::u32(static_cast<uint32_t>(n_layer)));
  w.set(arch + ".embedding_length", GgufValue::u32(static_cast<uint32_t>(n_embed)));
  w.set(arch + ".vocab_size", GgufValue::u32(static_cast<uint32_t>(n_vocab)));
  if (const RwkvTensor* ffn = find("blocks.0.ffn.key.weight"); ffn && ffn->shape.size() == 2) {
    w.set(arch + ".feed_forward_length", GgufValue::u32(static_cast<uint32_t>(ffn->shape[1])));
  }
  // RWKV-5/6 split the channels into heads: rwkv.cpp stores time_faaaa as PyTorch's
  // [heads, head size] plus a trailing unit axis, so ne = [1, head size, heads]. (RWKV-7 files
  // keep no tensor that shows the head size.)
  if (const RwkvTensor* faaaa = find("blocks.0.att.time_faaaa"); faaaa && faaaa->shape.size() == 3) {
    w.set(arch + ".wkv.head_size", GgufValue::u32(static_cast<uint32_t>(faaaa->shape[1])));
  }
  // rwkv.cpp files carry no vocabulary. A 256-token model is byte-level (rwkv.cpp's tiny models:
  // token id = byte value), which the engine's "rwkv" tokenizer spells as 256 one-byte tokens;
  // other vocabularies (World, Pile) would need their tokenizer files, which the format lacks.
  if (n_vocab == 256) {
    std::vector<std::string> bytes;
    for (int b = 0; b < 256; ++b) bytes.push_back(rwkv_escape_token(std::string(1, static_cast<char>(b))));
    w.set("tokenizer.ggml.model", GgufValue::string("rwkv"));
    w.set("tokenizer.ggml.tokens", GgufValue::string_array(bytes));
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  }
  w.set("mixq.source.format", GgufValue::string("rwkv.cpp"));
  w.set("mixq.source.file_version", GgufValue::u32(static_cast<uint32_t>(version)));
  if (const auto dt = ggml_type_of(data_type)) {
    w.set("mixq.source.data_type", GgufValue::string(type_traits(*dt).name));
  }
  // Only true matrices change type, as in rwkv.cpp's own FP16 and quantized files: vectors and
  // the small mixing tensors (x_rwkvag [64, 1, 6], r_k [64, 1], time_decay [1, 8, 8]) stay F32.
  auto target = [&](const RwkvTensor& t) {
    const bool matrix = t.shape.size() == 2 && t.shape[1] > 1;
    if (outtype == TypeId::F32) return TypeId::F32;
    if (!outtype || !matrix || t.type->quantized) return t.type->id;
    return *outtype;
  };
  for (const auto& t : tensors) w.add_tensor(t.name, t.shape, target(t));
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  for (const auto& t : tensors) {
    const TypeId to = target(t);
    if (to == t.type->id) {
      w.write_tensor_data({t.data, t.nbytes});
      f.drop_pages(t.data, t.nbytes);
      continue;
    }
    // The file packs tensors without alignment: copy before reading blocks as structs.
    bytes.assign(t.data, t.data + t.nbytes);
    const int64_t row = t.shape[0], rows = static_cast<int64_t>(t.nbytes / t.type->row_bytes(row));
    values.resize(static_cast<size_t>(row * rows));
    dequantize_rows(t.type->id, bytes.data(), values.data(), rows, row);
    bytes.resize(type_traits(to).row_bytes(row) * static_cast<size_t>(rows));
    quantize_rows(to, values.data(), bytes.data(), rows, row);
    w.write_tensor_data(bytes);
    f.drop_pages(t.data, t.nbytes);
  }
  w.finish();
  return tensors.size();
}

}  // namespace mixq
