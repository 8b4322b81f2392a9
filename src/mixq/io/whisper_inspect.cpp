#include "mixq/io/whisper_inspect.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mixq {

namespace {

struct Totals {
  int64_t params = 0;
  uint64_t bytes = 0;
};

Totals totals(const WhisperFile& f) {
  Totals t;
  for (const auto& x : f.tensors) {
    t.params += x.elements();
    t.bytes += x.data.size();
  }
  return t;
}

}  // namespace

std::string whisper_inspect_text(const WhisperFile& f, bool show_tensors) {
  const WhisperHparams& h = f.hparams;
  std::string s = fmt::format("{}: whisper.cpp model file\n", f.path().string());
  s += fmt::format("  n_vocab {}  n_audio_ctx {}  n_audio_state {}  n_audio_head {}  n_audio_layer {}\n", h.n_vocab,
                   h.n_audio_ctx, h.n_audio_state, h.n_audio_head, h.n_audio_layer);
  s += fmt::format("  n_text_ctx {}  n_text_state {}  n_text_head {}  n_text_layer {}  n_mels {}\n", h.n_text_ctx,
                   h.n_text_state, h.n_text_head, h.n_text_layer, h.n_mels);
  s += fmt::format("  ftype {} (weights {})  mel filters {} x {}  vocabulary {} tokens\n", h.ftype,
                   type_traits(f.weight_type()).name, f.filters.n_mel, f.filters.n_fft, f.vocab.size());
  if (show_tensors) {
    for (const auto& t : f.tensors) {
      s += fmt::format("  {:<44} [{}] {:<5} {:>10} bytes {:7.3f} bpw\n", t.name, fmt::join(t.ne, ", "),
                       type_traits(t.type).name, t.data.size(), 8.0 * t.data.size() / t.elements());
    }
  }
  const Totals tot = totals(f);
  s += fmt::format("{} tensors, {} parameters, {} bytes of tensor data ({:.3f} bits per weight)\n", f.tensors.size(),
                   tot.params, tot.bytes, tot.params ? 8.0 * tot.bytes / tot.params : 0.0);
  if (f.mixes_types()) {
    s += "warning: the weights mix types: stock whisper.cpp loads every weight in the header's type and refuses "
         "this file\n";
  }
  return s;
}

nlohmann::ordered_json whisper_inspect_json(const WhisperFile& f) {
  const WhisperHparams& h = f.hparams;
  nlohmann::ordered_json j;
  j["format"] = "whisper.cpp";
  j["hparams"] = {{"n_vocab", h.n_vocab},           {"n_audio_ctx", h.n_audio_ctx},   {"n_audio_state", h.n_audio_state},
                  {"n_audio_head", h.n_audio_head}, {"n_audio_layer", h.n_audio_layer}, {"n_text_ctx", h.n_text_ctx},
                  {"n_text_state", h.n_text_state}, {"n_text_head", h.n_text_head}, {"n_text_layer", h.n_text_layer},
                  {"n_mels", h.n_mels},             {"ftype", h.ftype}};
  j["weight_type"] = type_traits(f.weight_type()).name;
  j["mel_filters"] = {f.filters.n_mel, f.filters.n_fft};
  j["vocabulary_tokens"] = f.vocab.size();
  j["loads_in_whisper_cpp"] = !f.mixes_types();
  auto& arr = j["tensors"] = nlohmann::ordered_json::array();
  for (const auto& t : f.tensors) {
    arr.push_back({{"name", t.name}, {"shape", t.ne}, {"type", type_traits(t.type).name}, {"bytes", t.data.size()}});
  }
  const Totals tot = totals(f);
  j["parameters"] = tot.params;
  j["tensor_bytes"] = tot.bytes;
  return j;
}

}  // namespace mixq
