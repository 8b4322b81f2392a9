#include "mixq/convert/llama2c.h"

#include <cctype>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "mixq/io/byte_cursor.h"
#include "mixq/io/gguf.h"
#include "mixq/io/mapped_file.h"

namespace mixq {

namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
constexpr uint32_t kLlamaCppLlama2cContext = 128;

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};

// llama.cpp's token types: NORMAL 1, UNKNOWN 2, CONTROL 3, BYTE 6.
Vocab read_tokenizer_bin(const std::filesystem::path& path, int vocab_size) {
  const MappedFile f(path);
  ByteCursor in(f.bytes(), fmt::format("{}: not a llama2.c tokenizer for {} tokens", path.string(), vocab_size));
  in.read<int32_t>("the maximum token length");
  Vocab v;
  for (int id = 0; id < vocab_size; ++id) {
    const auto score = in.read<float>("a token score");
    const auto len = in.read<int32_t>("a token length");
    if (len < 0) in.fail(fmt::format("token {} has length {}", id, len));
    std::string text = in.take_string(static_cast<size_t>(len), "a token");
    int32_t type = 1;
    // llama2.c writes the specials with newlines around them and spaces as ' '; GGUF's llama
    // vocabulary spells them <unk>, <s>, </s> and uses U+2581 for a space. The classification
    // follows llama.cpp's converter, including its test for byte tokens ("<0x" and a hex digit).
    if (id == 0) {
      text = "<unk>";
      type = 2;
    } else if (id == 1 || id == 2) {
      text = id == 1 ? "<s>" : "</s>";
      type = 3;
    } else if (text.empty()) {
      type = 3;
    } else if (text.size() > 3 && text.starts_with("<0x") && std::isxdigit(static_cast<unsigned char>(text[3]))) {
      type = 6;
    }
    std::string spaced;
    for (char c : text) spaced += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
    text = std::move(spaced);
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  return v;
}

}  // namespace

Llama2cConfig read_llama2c_config(const std::filesystem::path& checkpoint) {
  const MappedFile f(checkpoint);
  if (f.size() < kHeaderBytes) {
    throw std::runtime_error(fmt::format("{}: too short for a llama2.c checkpoint header", checkpoint.string()));
  }
  int32_t h[7];
  std::memcpy(h, f.bytes().data(), sizeof h);
  // llama2.c's export.py --version 1/2 files start with "ak42" and a version; only the original
  // ("v0", also called legacy) layout is what llama.cpp's converter reads.
  if (static_cast<uint32_t>(h[0]) == 0x616b3432u) {
    throw std::runtime_error(fmt::format("{}: a llama2.c export of version {} (magic \"ak42\"); only the v0 (legacy) "
                                         "checkpoint format is supported: export with `export.py --version 0`",
                                         checkpoint.string(), h[1]));
  }
  Llama2cConfig c{h[0], h[1], h[2], h[3], h[4], h[5] < 0 ? -h[5] : h[5], h[6], h[5] > 0};
  const bool sane = c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 &&
                    c.vocab_size > 0 && c.seq_len > 0 && c.dim % c.n_heads == 0 && c.n_heads % c.n_kv_heads == 0 &&
                    c.dim <= (1 << 16) && c.hidden_dim <= (1 << 18) && c.n_layers <= 4096 && c.vocab_size <= (1 << 22);
  if (!sane) {
    throw std::runtime_error(fmt::format("{}: not a llama2.c checkpoint (header dim={} hidden={} layers={} heads={} "
                                         "kv_heads={} vocab={} seq_len={})",
                                         checkpoint.string(), h[0], h[1], h[2], h[3], h[4], h[5], h[6]));
  }
  return c;
}

size_t convert_llama2c(const std::filesystem::path& checkpoint, const std::filesystem::path& tokenizer,
                       const std::filesystem::path& out, std::optional<TypeId> outtype) {
  const Llama2cConfig c = read_llama2c_config(checkpoint);
  const MappedFile f(checkpoint);
  const int64_t dim = c.dim, hid = c.hidden_dim, nl = c.n_layers, head = c.dim / c.n_heads;
  const int64_t kv = head * c.n_kv_heads, voc = c.vocab_size;
  // llama2.c order: every layer's tensor of one kind is contiguous.
  struct Span {
    int64_t rows, cols;  // per layer (or whole, for non-layer tensors)
    size_t offset;       // in floats, after the header
  };
  size_t at = 0;
  auto take = [&](int64_t count, int64_t rows, int64_t cols) {
    Span s{rows, cols, at};
    at += static_cast<size_t>(count * rows * cols);
    return s;
  };
  const Span emb = take(1, voc, dim), rms_att = take(nl, 1, dim), wq = take(nl, dim, dim), wk = take(nl, kv, dim),
             wv = take(nl, kv, dim), wo = take(nl, dim, dim), rms_ffn = take(nl, 1, dim), w1 = take(nl, hid, dim),
             w2 = take(nl, dim, hid), w3 = take(nl, hid, dim), rms_final = take(1, 1, dim);
  at += static_cast<size_t>(c.seq_len) * static_cast<size_t>(head);  // freq_cis_real and _imag (unused)
  const Span wcls = c.shared_classifier ? emb : take(1, voc, dim);
  const size_t need = kHeaderBytes + at * sizeof(float);
  if (f.size() < need) {
    throw std::runtime_error(fmt::format("{}: truncated: the header promises {} bytes of weights, the file has {}",
                                         checkpoint.string(), need, f.size()));
  }
  // Extra bytes mean the header does not describe this file (llama.cpp's converter refuses them too).
  if (f.size() > need) {
    throw std::runtime_error(fmt::format("{}: {} bytes follow the last tensor the header describes: not a llama2.c v0 "
                                         "checkpoint, or its header is wrong",
                                         checkpoint.string(), f.size() - need));
  }
  const Vocab vocab = read_tokenizer_bin(tokenizer, c.vocab_size);

  GgufWriter w(out);
  // Keys in the order llama.cpp's converter writes them.
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
  std::vector<GgufValue> scores, types;
  for (float s : vocab.scores) scores.push_back(GgufValue::f32(s));
  for (int32_t t : vocab.types) types.push_back(GgufValue::i32(t));
  w.set("tokenizer.ggml.scores", GgufValue::array(GgufValueType::FLOAT32, std::move(scores)));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufValueType::INT32, std::move(types)));
  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("general.name", GgufValue::string("llama"));
  w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(0));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  w.set("tokenizer.ggml.seperator_token_id", GgufValue::u32(0xFFFFFFFFu));
  w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(0xFFFFFFFFu));
  // llama.cpp's converter always writes 128 here (its fixed n_ctx), not the checkpoint's seq_len;
  // mixq writes the same so that its output is byte-identical to llama.cpp's. A longer context
  // is still usable: llama.cpp and `mixq generate` take --ctx.
  w.set("llama.context_length", GgufValue::u32(kLlamaCppLlama2cContext));
  w.set("llama.embedding_length", GgufValue::u32(static_cast<uint32_t>(dim)));
  w.set("llama.feed_forward_length", GgufValue::u32(static_cast<uint32_t>(hid)));
  w.set("llama.attention.head_count", GgufValue::u32(static_cast<uint32_t>(c.n_heads)));
  w.set("llama.attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(c.n_kv_heads)));
  w.set("llama.block_count", GgufValue::u32(static_cast<uint32_t>(nl)));
  // llama.cpp writes min(64, head size); llama2.c rotates the whole head, so mixq writes the head
  // size. The two agree for every head size up to 64 (all the tinyllamas models).
  w.set("llama.rope.dimension_count", GgufValue::u32(static_cast<uint32_t>(head)));
  w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f));
  if (outtype) w.set("general.file_type", GgufValue::u32(*outtype == TypeId::F16 ? 1 : *outtype == TypeId::BF16 ? 32 : 0));

  struct Out {
    std::string name;
    Span span;
    int64_t layer;
  };
  std::vector<Out> tensors = {{"token_embd.weight", emb, 0}, {"output_norm.weight", rms_final, 0},
                              {"output.weight", wcls, 0}};
  for (int64_t l = 0; l < nl; ++l) {
    const std::string b = fmt::format("blk.{}.", l);
    tensors.insert(tensors.end(), {{b + "attn_q.weight", wq, l},     {b + "attn_k.weight", wk, l},
                                   {b + "attn_v.weight", wv, l},     {b + "attn_output.weight", wo, l},
                                   {b + "attn_norm.weight", rms_att, l}, {b + "ffn_gate.weight", w1, l},
                                   {b + "ffn_down.weight", w2, l},   {b + "ffn_up.weight", w3, l},
                                   {b + "ffn_norm.weight", rms_ffn, l}});
  }
  auto type_of = [&](const Span& s) { return outtype && s.rows > 1 ? *outtype : TypeId::F32; };
  for (const auto& t : tensors) {
    std::vector<int64_t> shape = {t.span.cols};
    if (t.span.rows > 1) shape.push_back(t.span.rows);
    w.add_tensor(t.name, shape, type_of(t.span));
  }
  std::vector<uint8_t> converted;
  for (const auto& t : tensors) {
    const size_t n = static_cast<size_t>(t.span.rows * t.span.cols);
    const auto* src = f.bytes().data() + kHeaderBytes + (t.span.offset + static_cast<size_t>(t.layer) * n) * 4;
    const TypeId type = type_of(t.span);
    if (type == TypeId::F32) {
      w.write_tensor_data({src, n * 4});
    } else {
      converted.resize(type_traits(type).row_bytes(t.span.cols) * static_cast<size_t>(t.span.rows));
      quantize_rows(type, reinterpret_cast<const float*>(src), converted.data(), t.span.rows, t.span.cols);
      w.write_tensor_data(converted);
    }
    f.drop_pages(src, n * 4);
  }
  w.finish();
  return tensors.size();
}

}  // namespace mixq
