// Hugging Face config.json for LLaMA-family models: the file read with errors that name it and the
// key (ConfigJson), and the hyperparameters a GGUF needs from it (read_hparams).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mixq::hf {

// A JSON file read whole; errors name the file.
nlohmann::json read_json(const std::filesystem::path& p);

// config.json values, with errors that name the file and the key.
class ConfigJson {
 public:
  explicit ConfigJson(const std::filesystem::path& path) : path_(path), j_(read_json(path)) {
    if (!j_.is_object()) fail("is not a JSON object");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(fmt::format("'{}' {}", path_.string(), what));
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const nlohmann::json& operator[](const char* key) const { return j_[key]; }
  int64_t positive(const char* key) const {
    if (!has(key)) fail(fmt::format("lacks \"{}\"", key));
    return positive_value(key);
  }
  int64_t positive_or(const char* key, int64_t fallback) const { return has(key) ? positive_value(key) : fallback; }
  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) fail(fmt::format("has a non-numeric \"{}\"", key));
    return j_[key].get<double>();
  }
  // A token id: an integer, or a list whose first entry is one (several eos ids).
  std::optional<uint32_t> token_id(const char* key) const {
    if (!has(key)) return std::nullopt;
    const nlohmann::json& v = j_[key].is_array() && !j_[key].empty() ? j_[key][0] : j_[key];
    if (!v.is_number_unsigned()) fail(fmt::format("has a \"{}\" that is not a token id", key));
    return v.get<uint32_t>();
  }

 private:
  int64_t positive_value(const char* key) const {
    const nlohmann::json& v = j_[key];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (int64_t{1} << 31)) {
      fail(fmt::format("has \"{}\": {}, not a positive integer", key, v.dump()));
    }
    return v.get<int64_t>();
  }
  std::filesystem::path path_;
  nlohmann::json j_;
};

struct Hparams {
  int64_t n_embd, n_ff, n_layer, n_head, n_head_kv, head_dim, n_vocab, n_ctx;
  double rope_theta, rms_eps;
  bool explicit_head_dim;  // config.json sets head_dim (Mistral-style), possibly != n_embd / n_head
  bool tied;               // the output head reuses the token embedding
};

// The hyperparameters of a LlamaForCausalLM / MistralForCausalLM config; errors name the key.
Hparams read_hparams(const ConfigJson& c);

}  // namespace mixq::hf
