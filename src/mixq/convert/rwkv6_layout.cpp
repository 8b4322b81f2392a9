#include "mixq/convert/rwkv6_layout.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mixq {

namespace {

std::vector<float> decode(const GgufTensor& t) {
  std::vector<float> v(static_cast<size_t>(t.n_elements()));
  dequantize_rows(t.type->id, t.data, v.data(), t.n_rows(), t.row_length());
  return v;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(float));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace

size_t convert_rwkv5_to_rwkv6(const GgufFile& in, const std::filesystem::path& out) {
  const auto int_key = [&](const std::string& key) {
    const GgufValue* v = in.find(key);
    if (!v || !v->is_integer()) throw std::runtime_error(fmt::format("{}: missing metadata key {}", in.label(), key));
    return v->as_int();
  };
  const int64_t E = int_key("rwkv5.embedding_length"), n_layer = int_key("rwkv5.block_count");
  const auto find = [&](const std::string& name) -> const GgufTensor& {
    const GgufTensor* t = in.find_tensor(name);
    if (!t) throw std::runtime_error(fmt::format("{}: missing tensor {}", in.label(), name));
    if (!t->type->can_dequantize()) {
      throw std::runtime_error(fmt::format("{}: tensor {} is {}, which mixq cannot decode", in.label(), name, t->type->name));
    }
    return *t;
  };
  // A vector of E values: [E] or rwkv.cpp's [E, 1, 1].
  const auto vector = [&](const std::string& name) -> const GgufTensor& {
    const GgufTensor& t = find(name);
    if (t.shape.empty() || t.shape[0] != E || t.n_elements() != E) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected {} values", in.label(), name,
                                           fmt::join(t.shape, ", "), E));
    }
    return t;
  };
  const GgufTensor& decay0 = find("blocks.0.att.time_decay");
  if (decay0.shape.size() != 3 || decay0.shape[0] != 1 || decay0.shape[1] <= 0 || decay0.shape[1] * decay0.shape[2] != E) {
    throw std::runtime_error(fmt::format("{}: tensor blocks.0.att.time_decay has shape [{}], expected [1, head size, heads]",
                                         in.label(), fmt::join(decay0.shape, ", ")));
  }
  const int64_t S = decay0.shape[1], H = E / S;
  const GgufTensor& emb = find("emb.weight");
  const GgufTensor& ffn_key0 = find("blocks.0.ffn.key.weight");
  if (emb.shape.size() != 2 || emb.shape[0] != E || ffn_key0.shape.size() != 2 || ffn_key0.shape[0] != E) {
    throw std::runtime_error(fmt::format("{}: emb.weight [{}] / blocks.0.ffn.key.weight [{}] do not have rows of {}",
                                         in.label(), fmt::join(emb.shape, ", "), fmt::join(ffn_key0.shape, ", "), E));
  }
  const int64_t V = emb.shape[1], F = ffn_key0.shape[1];
  const int64_t X = kRwkv6MixLoraWidth, XD = kRwkv6DecayLoraWidth;

  GgufWriter w(out);
  w.copy_metadata(in);
  for (const GgufKeyValue& kv : in.metadata()) {
    if (kv.key.starts_with("rwkv5.")) w.remove(kv.key);
  }
  const auto u32 = [](int64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  w.set("general.architecture", GgufValue::string("rwkv6"));
  w.set("rwkv6.block_count", u32(n_layer));
  w.set("rwkv6.context_length", u32(1048576));  // recurrent: no bound; llama.cpp wants a number
  w.set("rwkv6.embedding_length", u32(E));
  w.set("rwkv6.feed_forward_length", u32(F));
  w.set("rwkv6.vocab_size", u32(V));
  w.set("rwkv6.wkv.head_size", u32(S));
  w.set("rwkv6.time_mix_extra_dim", u32(X));
  w.set("rwkv6.time_decay_extra_dim", u32(XD));
  w.set("rwkv6.attention.layer_norm_epsilon", GgufValue::f32(1e-5f));
  w.set("rwkv6.rescale_every_n_layers", u32(0));
  w.set("rwkv6.token_shift_count", u32(2));  // att and ffn shift, as llama.cpp's graph asserts

  // What each output tensor holds: the input's bytes, or bytes made when it is written (so one
  // computed tensor at a time is in memory).
  struct Out {
    std::string name;
    std::vector<int64_t> shape;
    TypeId type;
    const GgufTensor* src;                     // copied as it is, unless make is set
    std::function<std::vector<uint8_t>()> make;
  };
  std::vector<Out> outs;
  const auto copy = [&](const std::string& name, const GgufTensor& t, std::vector<int64_t> shape) {
    outs.push_back({name, std::move(shape), t.type->id, &t, nullptr});
  };
  const auto copy_vector = [&](const std::string& name, const std::string& src, std::vector<int64_t> shape) {
    copy(name, vector(src), std::move(shape));  // same row length: the bytes fit the new shape
  };
  const auto zeros = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    outs.push_back({name, std::move(shape), TypeId::F32, nullptr,
                    [n] { return std::vector<uint8_t>(static_cast<size_t>(n) * sizeof(float), 0); }});
  };
  const auto computed = [&](const std::string& name, std::vector<int64_t> shape, std::function<std::vector<float>()> f) {
    outs.push_back({name, std::move(shape), TypeId::F32, nullptr, [f] { return f32_bytes(f()); }});
  };
  // 1 - mix of rwkv.cpp's mix vectors, concatenated.
  const auto lerps = [&](std::vector<const GgufTensor*> mixes) {
    return [mixes, E] {
      std::vector<float> v;
      for (const GgufTensor* m : mixes) {
        if (m == nullptr) {
          v.insert(v.end(), static_cast<size_t>(E), 0.0f);
          continue;
        }
        for (float x : decode(*m)) v.push_back(1.0f - x);
      }
      return v;
    };
  };
  // A matrix with rows of `row` values, `rows` of them.
  const auto matrix = [&](const std::string& name, const std::string& src, int64_t row, int64_t rows) {
    const GgufTensor& t = find(src);
    if (t.shape != std::vector<int64_t>{row, rows}) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [{}, {}]", in.label(), src,
                                           fmt::join(t.shape, ", "), row, rows));
    }
    copy(name, t, t.shape);
  };

  copy("token_embd.weight", emb, emb.shape);
  copy_vector("token_embd_norm.weight", "blocks.0.ln0.weight", {E});
  copy_vector("token_embd_norm.bias", "blocks.0.ln0.bias", {E});
  for (int64_t l = 0; l < n_layer; ++l) {
    const std::string a = fmt::format("blocks.{}.att.", l), f = fmt::format("blocks.{}.ffn.", l),
                      b = fmt::format("blk.{}.", l);
    copy_vector(b + "attn_norm.weight", fmt::format("blocks.{}.ln1.weight", l), {E});
    copy_vector(b + "attn_norm.bias", fmt::format("blocks.{}.ln1.bias", l), {E});
    copy_vector(b + "attn_norm_2.weight", fmt::format("blocks.{}.ln2.weight", l), {E});
    copy_vector(b + "attn_norm_2.bias", fmt::format("blocks.{}.ln2.bias", l), {E});
    zeros(b + "time_mix_w1.weight", {E, 5 * X});
    zeros(b + "time_mix_w2.weight", {X, E, 5});
    zeros(b + "time_mix_lerp_x.weight", {E, 1, 1});
    computed(b + "time_mix_lerp_fused.weight", {E, 1, 1, 5},
             lerps({nullptr, &vector(a + "time_mix_k"), &vector(a + "time_mix_v"), &vector(a + "time_mix_r"),
                    &vector(a + "time_mix_g")}));
    const GgufTensor& faaaa = find(a + "time_faaaa");
    const GgufTensor& decay = find(a + "time_decay");
    for (const GgufTensor* t : {&faaaa, &decay}) {
      if (t->shape != std::vector<int64_t>{1, S, H}) {
        throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [1, {}, {}]", in.label(), t->name,
                                             fmt::join(t->shape, ", "), S, H));
      }
    }
    computed(b + "time_mix_first.weight", {S, H}, [&faaaa] { return decode(faaaa); });
    computed(b + "time_mix_decay.weight", {E}, [&decay] {
      std::vector<float> v = decode(decay);
      for (float& d : v) d = static_cast<float>(std::log(-std::log(static_cast<double>(d))));
      return v;
    });
    zeros(b + "time_mix_decay_w1.weight", {E, XD});
    zeros(b + "time_mix_decay_w2.weight", {XD, E});
    matrix(b + "time_mix_key.weight", a + "key.weight", E, E);
    const GgufTensor& value = find(a + "value.weight");
    if (value.shape != std::vector<int64_t>{E, E}) {
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], expected [{}, {}]", in.label(), value.name,
                                           fmt::join(value.shape, ", "), E, E));
    }
    outs.push_back({b + "time_mix_value.weight", value.shape, value.type->id, nullptr, [&value, &in] {
                      std::vector<float> v = decode(value);
                      for (float& x : v) x *= 8.0f;
                      std::vector<uint8_t> bytes(value.nbytes);
                      quantize_rows(value.type->id, v.data(), bytes.data(), value.n_rows(), value.row_length());
                      const std::vector<float> back = [&] {
                        std::vector<float> r(v.size());
                        dequantize_rows(value.type->id, bytes.data(), r.data(), value.n_rows(), value.row_length());
                        return r;
                      }();
                      if (std::memcmp(back.data(), v.data(), v.size() * sizeof(float)) != 0) {
                        throw std::runtime_error(fmt::format(
                            "{}: tensor {} is {}: 8 x its values (for llama.cpp's rwkv6 GroupNorm eps) are not exact "
                            "in that type; convert the FP32 or FP16 model, then quantize the rwkv6 file",
                            in.label(), value.name, value.type->name));
                      }
                      return bytes;
                    }});
    matrix(b + "time_mix_receptance.weight", a + "receptance.weight", E, E);
    matrix(b + "time_mix_gate.weight", a + "gate.weight", E, E);
    copy_vector(b + "time_mix_ln.weight", a + "ln_x.weight", {E});
    copy_vector(b + "time_mix_ln.bias", a + "ln_x.bias", {E});
    matrix(b + "time_mix_output.weight", a + "output.weight", E, E);
    computed(b + "channel_mix_lerp_k.weight", {E, 1, 1}, lerps({&vector(f + "time_mix_k")}));
    computed(b + "channel_mix_lerp_r.weight", {E, 1, 1}, lerps({&vector(f + "time_mix_r")}));
    matrix(b + "channel_mix_key.weight", f + "key.weight", E, F);
    matrix(b + "channel_mix_value.weight", f + "value.weight", F, E);
    matrix(b + "channel_mix_receptance.weight", f + "receptance.weight", E, E);
  }
  copy_vector("output_norm.weight", "ln_out.weight", {E});
  copy_vector("output_norm.bias", "ln_out.bias", {E});
  const GgufTensor& head = find("head.weight");
  if (head.shape != emb.shape) {
    throw std::runtime_error(fmt::format("{}: tensor head.weight has shape [{}], expected [{}]", in.label(),
                                         fmt::join(head.shape, ", "), fmt::join(emb.shape, ", ")));
  }
  copy("output.weight", head, head.shape);

  for (const Out& o : outs) w.add_tensor(o.name, o.shape, o.type);
  for (const Out& o : outs) {
    if (o.make) {
      w.write_tensor_data(o.make());
    } else {
      w.write_tensor_data(o.src->bytes());
      in.drop_pages(*o.src);
    }
  }
  w.finish();
  return outs.size();
}

}  // namespace mixq
