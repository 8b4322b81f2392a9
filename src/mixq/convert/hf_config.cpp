#include "mixq/convert/hf_config.h"

#include <fstream>
#include <sstream>

#include "mixq/util/json_file.h"

namespace mixq::hf {

namespace fs = std::filesystem;
using json = nlohmann::json;

json read_json(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f || fs::is_directory(p)) throw std::runtime_error(fmt::format("cannot read '{}'", p.string()));
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_json_text<json>(ss.str(), fmt::format("'{}'", p.string()));
}

Hparams read_hparams(const ConfigJson& c) {
  if (c.has("architectures")) {
    const json& a = c["architectures"];
    const bool supported = a.is_array() && std::any_of(a.begin(), a.end(), [](const json& x) {
      return x == "LlamaForCausalLM" || x == "MistralForCausalLM";
    });
    if (!supported) c.fail(fmt::format("names architectures {}: mixq converts LlamaForCausalLM and MistralForCausalLM", a.dump()));
  }
  Hparams h{};
  h.n_embd = c.positive("hidden_size");
  h.n_ff = c.positive("intermediate_size");
  h.n_layer = c.positive("num_hidden_layers");
  h.n_head = c.positive("num_attention_heads");
  h.n_head_kv = c.positive_or("num_key_value_heads", h.n_head);
  h.n_vocab = c.positive("vocab_size");
  h.n_ctx = c.positive_or("max_position_embeddings", 2048);
  h.explicit_head_dim = c.has("head_dim");
  h.head_dim = c.positive_or("head_dim", h.n_embd / h.n_head);
  h.rope_theta = c.number_or("rope_theta", 10000.0);
  h.rms_eps = c.number_or("rms_norm_eps", 1e-6);
  h.tied = c.has("tie_word_embeddings") && c["tie_word_embeddings"].is_boolean() && c["tie_word_embeddings"].get<bool>();
  if (h.n_head % h.n_head_kv != 0) c.fail(fmt::format("has {} heads, not a multiple of {} kv heads", h.n_head, h.n_head_kv));
  if (!h.explicit_head_dim && h.n_embd % h.n_head != 0) {
    c.fail(fmt::format("has hidden_size {} not divisible by {} heads", h.n_embd, h.n_head));
  }
  // q and k rows are reordered in rotary pairs.
  if (h.head_dim % 2 != 0) c.fail(fmt::format("has an odd head size {}", h.head_dim));
  if (c.has("rope_scaling")) {
    const json& s = c["rope_scaling"];
    const std::string type = s.is_object() ? s.value("rope_type", s.value("type", "")) : "";
    if (type != "linear" || !s.contains("factor") || !s["factor"].is_number()) {
      c.fail(fmt::format("has rope_scaling {}: mixq converts only linear scaling", s.dump()));
    }
  }
  return h;
}

}  // namespace mixq::hf
