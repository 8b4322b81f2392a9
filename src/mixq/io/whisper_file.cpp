#include "mixq/io/whisper_file.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mixq/io/atomic_file.h"
#include "mixq/io/byte_cursor.h"

namespace mixq {

namespace {

// ggml's ftype numbers for the weight types whisper.cpp's loader accepts.
struct FtypeRow {
  int32_t ftype;
  TypeId type;
};
constexpr FtypeRow kFtypes[] = {
    {0, TypeId::F32},   {1, TypeId::F16},   {2, TypeId::Q4_0},  {3, TypeId::Q4_1},  {7, TypeId::Q8_0},
    {8, TypeId::Q5_0},  {9, TypeId::Q5_1},  {10, TypeId::Q2_K}, {11, TypeId::Q3_K}, {12, TypeId::Q4_K},
    {13, TypeId::Q5_K}, {14, TypeId::Q6_K},
};

// Bounds that keep every size computation far from overflow; real models are far below them.
constexpr int32_t kMaxDim = 1 << 24;
constexpr int32_t kMaxMelValues = 1 << 20;
constexpr uint32_t kMaxTokenBytes = 1 << 16;

std::string shape_text(const std::vector<int64_t>& ne) { return fmt::format("[{}]", fmt::join(ne, ", ")); }

}  // namespace

std::vector<WhisperTensorSpec> whisper_tensor_specs(const WhisperHparams& hp) {
  using R = WhisperTensorRole;
  std::vector<WhisperTensorSpec> s;
  const int64_t a = hp.n_audio_state, t = hp.n_text_state;
  auto block = [&](const std::string& p, int64_t n, bool cross) {
    auto attn = [&](const std::string& q) {
      s.push_back({p + q + ".query.weight", {n, n}, R::Weight});
      s.push_back({p + q + ".query.bias", {n}, R::F32});
      s.push_back({p + q + ".key.weight", {n, n}, R::Weight});
      s.push_back({p + q + ".value.weight", {n, n}, R::Weight});
      s.push_back({p + q + ".value.bias", {n}, R::F32});
      s.push_back({p + q + ".out.weight", {n, n}, R::Weight});
      s.push_back({p + q + ".out.bias", {n}, R::F32});
      s.push_back({p + q + "_ln.weight", {n}, R::F32});
      s.push_back({p + q + "_ln.bias", {n}, R::F32});
    };
    attn("attn");
    if (cross) attn("cross_attn");
    s.push_back({p + "mlp.0.weight", {n, 4 * n}, R::Weight});
    s.push_back({p + "mlp.0.bias", {4 * n}, R::F32});
    s.push_back({p + "mlp.2.weight", {4 * n, n}, R::Weight});
    s.push_back({p + "mlp.2.bias", {n}, R::F32});
    s.push_back({p + "mlp_ln.weight", {n}, R::F32});
    s.push_back({p + "mlp_ln.bias", {n}, R::F32});
  };
  s.push_back({"encoder.positional_embedding", {a, hp.n_audio_ctx}, R::F32});
  s.push_back({"encoder.conv1.weight", {3, hp.n_mels, a}, R::Conv});
  s.push_back({"encoder.conv1.bias", {1, a}, R::F32});
  s.push_back({"encoder.conv2.weight", {3, a, a}, R::Conv});
  s.push_back({"encoder.conv2.bias", {1, a}, R::F32});
  for (int i = 0; i < hp.n_audio_layer; ++i) block(fmt::format("encoder.blocks.{}.", i), a, false);
  s.push_back({"encoder.ln_post.weight", {a}, R::F32});
  s.push_back({"encoder.ln_post.bias", {a}, R::F32});
  s.push_back({"decoder.positional_embedding", {t, hp.n_text_ctx}, R::F32});
  s.push_back({"decoder.token_embedding.weight", {t, hp.n_vocab}, R::Weight});
  for (int i = 0; i < hp.n_text_layer; ++i) block(fmt::format("decoder.blocks.{}.", i), t, true);
  s.push_back({"decoder.ln.weight", {t}, R::F32});
  s.push_back({"decoder.ln.bias", {t}, R::F32});
  return s;
}

std::optional<TypeId> whisper_weight_type(int32_t ftype) {
  if (ftype < 0) return std::nullopt;
  const int32_t base = ftype % kWhisperQuantFactor;
  for (const auto& r : kFtypes) {
    if (r.ftype == base) return r.type;
  }
  return std::nullopt;
}

bool whisper_loads_type(TypeId type) {
  for (const auto& r : kFtypes) {
    if (r.type == type) return true;
  }
  return false;
}

int32_t whisper_ftype_for(TypeId type) {
  for (const auto& r : kFtypes) {
    if (r.type == type) {
      return type_traits(type).quantized ? kWhisperQuantVersion * kWhisperQuantFactor + r.ftype : r.ftype;
    }
  }
  throw TypeError(fmt::format("whisper.cpp cannot load {} weights: use f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, "
                              "q2_k, q3_k, q4_k, q5_k or q6_k",
                              type_traits(type).name));
}

TypeId whisper_stored_type(WhisperTensorRole role, TypeId weight_type) {
  switch (role) {
    case WhisperTensorRole::Weight: return weight_type;
    case WhisperTensorRole::Conv: return weight_type == TypeId::F32 ? TypeId::F32 : TypeId::F16;
    case WhisperTensorRole::F32: return TypeId::F32;
  }
  return TypeId::F32;
}

bool whisper_quantizes_tensor(const std::string& name, size_t n_dims) {
  if (n_dims != 2) return false;
  return name != "encoder.conv1.bias" && name != "encoder.conv2.bias" && name != "encoder.positional_embedding" &&
         name != "decoder.positional_embedding";
}

int64_t WhisperTensor::elements() const {
  int64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

size_t whisper_tensor_bytes(TypeId type, const std::vector<int64_t>& ne) {
  const TypeTraits& tt = type_traits(type);
  if (!tt.fits_row(ne.at(0))) {
    throw TypeError(fmt::format("rows of {} values do not fill {} blocks of {}", ne[0], tt.name, tt.block_size));
  }
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  return tt.row_bytes(ne[0]) * static_cast<size_t>(rows);
}

bool is_whisper_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream f(path, std::ios::binary);
  uint32_t magic = 0;
  if (!f.read(reinterpret_cast<char*>(&magic), sizeof magic)) return false;
  return magic == kWhisperMagic;
}

WhisperFile WhisperFile::open(const std::filesystem::path& path, const WhisperReadOptions& options) {
  WhisperFile w;
  w.path_ = path;
  w.map_ = MappedFile(path);
  const std::string where = path.string();
  ByteCursor in(w.map_.bytes(), where + ": not a valid whisper.cpp model");
  if (in.read<uint32_t>("the magic") != kWhisperMagic) {
    in.fail("wrong magic (a whisper.cpp model starts with 'lmgg', 0x67676d6c; convert other models with mixq "
            "convert)");
  }
  WhisperHparams& hp = w.hparams;
  for (int32_t* f : {&hp.n_vocab, &hp.n_audio_ctx, &hp.n_audio_state, &hp.n_audio_head, &hp.n_audio_layer,
                     &hp.n_text_ctx, &hp.n_text_state, &hp.n_text_head, &hp.n_text_layer, &hp.n_mels, &hp.ftype}) {
    *f = in.read<int32_t>("the hyperparameters");
  }
  const std::pair<const char*, int32_t> dims[] = {
      {"n_vocab", hp.n_vocab},           {"n_audio_ctx", hp.n_audio_ctx},   {"n_audio_state", hp.n_audio_state},
      {"n_audio_head", hp.n_audio_head}, {"n_audio_layer", hp.n_audio_layer}, {"n_text_ctx", hp.n_text_ctx},
      {"n_text_state", hp.n_text_state}, {"n_text_head", hp.n_text_head}, {"n_text_layer", hp.n_text_layer},
      {"n_mels", hp.n_mels}};
  for (const auto& [name, v] : dims) {
    if (v <= 0 || v > kMaxDim) in.fail(fmt::format("hyperparameter {} = {} is out of range", name, v));
  }
  if (hp.n_audio_layer > 1024 || hp.n_text_layer > 1024) in.fail("more than 1024 layers");
  if (hp.n_text_state != hp.n_audio_state) {
    in.fail(fmt::format("n_text_state {} differs from n_audio_state {} (whisper.cpp requires them equal)",
                        hp.n_text_state, hp.n_audio_state));
  }
  if (hp.n_audio_state % hp.n_audio_head != 0 || hp.n_text_state % hp.n_text_head != 0) {
    in.fail("the state width is not a multiple of the head count");
  }
  if (!whisper_weight_type(hp.ftype)) in.fail(fmt::format("unknown ftype {}", hp.ftype));

  WhisperMelFilters& mf = w.filters;
  mf.n_mel = in.read<int32_t>("the mel filter sizes");
  mf.n_fft = in.read<int32_t>("the mel filter sizes");
  if (mf.n_mel != hp.n_mels) {
    in.fail(fmt::format("the mel filters have {} rows but n_mels is {}", mf.n_mel, hp.n_mels));
  }
  if (mf.n_fft <= 0 || int64_t{mf.n_mel} * mf.n_fft > kMaxMelValues) {
    in.fail(fmt::format("mel filter size {} x {} is out of range", mf.n_mel, mf.n_fft));
  }
  const auto fb = in.take(static_cast<size_t>(mf.n_mel) * mf.n_fft * sizeof(float), "the mel filters");
  mf.data.resize(static_cast<size_t>(mf.n_mel) * mf.n_fft);
  std::memcpy(mf.data.data(), fb.data(), fb.size());

  const auto n_tokens = in.read<int32_t>("the vocabulary size");
  if (n_tokens <= 0 || n_tokens > hp.n_vocab) {
    in.fail(fmt::format("the vocabulary holds {} tokens but n_vocab is {} (whisper.cpp needs 1 .. n_vocab)", n_tokens,
                        hp.n_vocab));
  }
  w.vocab.reserve(std::min(static_cast<size_t>(n_tokens), in.remaining() / 4));  // 4 bytes per token at least
  for (int32_t i = 0; i < n_tokens; ++i) {
    const auto len = in.read<uint32_t>("a token length");
    if (len > kMaxTokenBytes) in.fail(fmt::format("token {} is {} bytes long", i, len));
    w.vocab.push_back(in.take_string(len, "a token"));
  }

  std::map<std::string, WhisperTensorSpec> specs;
  for (auto& s : whisper_tensor_specs(hp)) specs.emplace(s.name, std::move(s));
  const TypeId wtype = *whisper_weight_type(hp.ftype);
  std::map<std::string, size_t> seen;
  while (!in.at_end()) {
    const auto n_dims = in.read<int32_t>("a tensor header"), name_len = in.read<int32_t>("a tensor header"),
               ttype = in.read<int32_t>("a tensor header");
    if (n_dims < 1 || n_dims > 4) in.fail(fmt::format("a tensor with {} dimensions", n_dims));
    if (name_len <= 0 || name_len > 4096) in.fail(fmt::format("a tensor name length of {}", name_len));
    WhisperTensor t;
    for (int d = 0; d < n_dims; ++d) {
      const auto ne = in.read<int32_t>("a tensor shape");
      if (ne <= 0 || ne > kMaxDim) in.fail(fmt::format("a tensor dimension of {}", ne));
      t.ne.push_back(ne);
    }
    t.name = in.take_string(static_cast<size_t>(name_len), "a tensor name");
    const auto spec = specs.find(t.name);
    if (spec == specs.end()) in.fail(fmt::format("unknown tensor '{}' (whisper.cpp would refuse it)", t.name));
    if (seen.contains(t.name)) in.fail(fmt::format("tensor '{}' appears twice", t.name));
    if (t.ne != spec->second.ne) {
      in.fail(fmt::format("tensor '{}' has shape {} but the hparams give {}", t.name, shape_text(t.ne),
                          shape_text(spec->second.ne)));
    }
    const TypeTraits* tt = ttype >= 0 ? find_type(static_cast<uint32_t>(ttype)) : nullptr;
    if (!tt || !whisper_loads_type(tt->id)) {
      in.fail(fmt::format("tensor '{}' has type {}, which whisper.cpp does not load", t.name,
                          tt ? tt->name : std::to_string(ttype)));
    }
    t.type = tt->id;
    const TypeId want = whisper_stored_type(spec->second.role, wtype);
    const bool mixed_ok = options.allow_mixed_weights && spec->second.role == WhisperTensorRole::Weight;
    if (t.type != want && !mixed_ok) {
      in.fail(fmt::format("tensor '{}' is {} but whisper.cpp loads it as {} in a file of ftype {}", t.name, tt->name,
                          type_traits(want).name, hp.ftype));
    }
    if (!tt->fits_row(t.ne[0])) {
      in.fail(fmt::format("tensor '{}' rows of {} values do not fill {} blocks", t.name, t.ne[0], tt->name));
    }
    t.data = in.take(whisper_tensor_bytes(t.type, t.ne), "tensor data");
    seen.emplace(t.name, w.tensors.size());
    w.tensors.push_back(std::move(t));
  }
  if (!w.tensors.empty() && w.tensors.size() != specs.size()) {
    for (const auto& [name, s] : specs) {
      if (!seen.contains(name)) {
        throw std::runtime_error(fmt::format("{}: not a valid whisper.cpp model: tensor '{}' is missing ({} of {} "
                                             "tensors present)",
                                             where, name, w.tensors.size(), specs.size()));
      }
    }
  }
  return w;
}

const WhisperTensor* WhisperFile::find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

TypeId WhisperFile::weight_type() const { return *whisper_weight_type(hparams.ftype); }

bool WhisperFile::mixes_types() const {
  const TypeId w = weight_type();
  for (const auto& t : tensors) {
    if (whisper_quantizes_tensor(t.name, t.ne.size()) && t.type != w) return true;
  }
  return false;
}

WhisperWriter::WhisperWriter(const std::filesystem::path& path, const WhisperHparams& hp,
                             const WhisperMelFilters& filters, const std::vector<std::string>& vocab)
    : out_(std::make_unique<AtomicFile>(path)) {
  if (filters.data.size() != static_cast<size_t>(filters.n_mel) * static_cast<size_t>(filters.n_fft)) {
    throw std::logic_error("WhisperWriter: filter data does not match n_mel x n_fft");
  }
  auto put = [&](const void* p, size_t n) {
    out_->write(p, n);
    bytes_ += n;
  };
  auto i32 = [&](int32_t v) { put(&v, 4); };
  const uint32_t magic = kWhisperMagic;
  put(&magic, 4);
  for (int32_t v : {hp.n_vocab, hp.n_audio_ctx, hp.n_audio_state, hp.n_audio_head, hp.n_audio_layer, hp.n_text_ctx,
                    hp.n_text_state, hp.n_text_head, hp.n_text_layer, hp.n_mels, hp.ftype}) {
    i32(v);
  }
  i32(filters.n_mel);
  i32(filters.n_fft);
  put(filters.data.data(), filters.data.size() * sizeof(float));
  i32(static_cast<int32_t>(vocab.size()));
  for (const auto& tok : vocab) {
    const auto len = static_cast<uint32_t>(tok.size());
    put(&len, 4);
    put(tok.data(), tok.size());
  }
}

WhisperWriter::~WhisperWriter() = default;

void WhisperWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, TypeId type,
                               std::span<const uint8_t> data) {
  if (ne.empty() || ne.size() > 4) throw std::logic_error("WhisperWriter: a tensor needs 1 to 4 dimensions");
  if (data.size() != whisper_tensor_bytes(type, ne)) {
    throw std::logic_error(fmt::format("WhisperWriter: tensor '{}' has {} bytes for {} {}", name, data.size(),
                                       type_traits(type).name, shape_text(ne)));
  }
  const int32_t head[3] = {static_cast<int32_t>(ne.size()), static_cast<int32_t>(name.size()),
                           static_cast<int32_t>(type)};
  out_->write(head, sizeof head);
  for (auto d : ne) {
    const auto v = static_cast<int32_t>(d);
    out_->write(&v, 4);
  }
  out_->write(name);
  out_->write(data.data(), data.size());
  bytes_ += sizeof head + 4 * ne.size() + name.size() + data.size();
}

void WhisperWriter::finish() { out_->commit(); }

}  // namespace mixq
