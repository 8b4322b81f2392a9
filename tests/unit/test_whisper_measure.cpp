// Measurement and bit allocation on Whisper (plan/whisper_measure.h): the engine's encoder restart
// and weight overrides that the probes use, and `mixq measure` + `mixq plan` + `mixq quantize
// --plan` on a small synthetic whisper.cpp model (random weights, a real vocabulary size so the
// decoder's special tokens exist): every quantizable tensor measured (encoder, decoder, cross-
// attention), plans that keep their budgets, and files of exactly the planned size and types.
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "mixq/convert/whisper_mel.h"
#include "mixq/engine/whisper_audio.h"
#include "mixq/engine/whisper_model.h"
#include "mixq/io/whisper_file.h"
#include "mixq/plan/plan.h"
#include "mixq/plan/whisper_measure.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;

// Small layers, tiny.en's vocabulary size (the prompt's special tokens are ids near 50257).
WhisperHparams small_hparams() {
  WhisperHparams hp;
  hp.n_vocab = 51864;
  hp.n_audio_ctx = 16;
  hp.n_audio_state = 64;
  hp.n_audio_head = 2;
  hp.n_audio_layer = 2;
  hp.n_text_ctx = 10;
  hp.n_text_state = 64;
  hp.n_text_head = 2;
  hp.n_text_layer = 2;
  hp.n_mels = 80;
  return hp;
}

void write_model(const fs::path& p, TypeId wtype) {
  WhisperHparams hp = small_hparams();
  hp.ftype = whisper_ftype_for(wtype);
  std::vector<std::string> vocab;
  for (int i = 0; i < 200; ++i) vocab.push_back(fmt::format(" w{}", i));
  WhisperWriter w(p, hp, whisper_mel_filters(hp.n_mels), vocab);
  unsigned seed = 7;
  for (const auto& spec : whisper_tensor_specs(hp)) {
    int64_t n = 1;
    for (auto d : spec.ne) n *= d;
    // Weights of about 1/sqrt(fan-in), norms around 1, so the activations neither vanish nor blow up.
    const bool norm = spec.ne.size() == 1 && spec.name.find("ln") != std::string::npos && spec.name.ends_with(".weight");
    std::vector<float> x = test::gaussian(static_cast<size_t>(n), norm ? 0.1f : 0.15f, seed++);
    if (norm) {
      for (auto& v : x) v += 1.0f;
    }
    const TypeId t = whisper_stored_type(spec.role, wtype);
    std::vector<uint8_t> bytes(whisper_tensor_bytes(t, spec.ne));
    quantize_rows(t, x.data(), bytes.data(), n / spec.ne[0], spec.ne[0]);
    w.add_tensor(spec.name, spec.ne, t, bytes);
  }
  w.finish();
}

// 16 kHz mono 16-bit PCM: a few tones.
void write_wav(const fs::path& p, int n, float f0) {
  std::vector<int16_t> pcm(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const float t = static_cast<float>(i) / 16000.0f;
    pcm[static_cast<size_t>(i)] =
        static_cast<int16_t>(8000.0f * (std::sin(6.2831853f * f0 * t) + 0.5f * std::sin(6.2831853f * 3.1f * f0 * t)));
  }
  std::string b = "RIFF";
  auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](uint16_t v) { b.append(reinterpret_cast<const char*>(&v), 2); };
  u32(36 + 2 * static_cast<uint32_t>(n));
  b += "WAVEfmt ";
  u32(16), u16(1), u16(1), u32(16000), u32(32000), u16(2), u16(16);
  b += "data";
  u32(2 * static_cast<uint32_t>(n));
  b.append(reinterpret_cast<const char*>(pcm.data()), pcm.size() * 2);
  std::ofstream(p, std::ios::binary) << b;
}

struct SmallWhisper {
  fs::path dir = test::temp_dir() / "whisper-measure";
  fs::path f32 = dir / "small-f32.bin", f16 = dir / "small-f16.bin", list = dir / "list.tsv";
  SmallWhisper() {
    fs::create_directories(dir);
    write_model(f32, TypeId::F32);
    write_model(f16, TypeId::F16);
    write_wav(dir / "a.wav", 5000, 440.0f);
    write_wav(dir / "b.wav", 4000, 300.0f);
    std::ofstream(list) << "a.wav\tsome words\nb.wav\tother words\n";
  }
  ~SmallWhisper() { fs::remove_all(dir); }
};

TEST(WhisperMeasure, EncoderRestartsAndWeightOverridesAreExact) {
  SmallWhisper s;
  WhisperModel model(WhisperFile::open(s.f32));
  const std::vector<float> audio = read_wav_16k_mono(s.dir / "a.wav");
  std::vector<std::vector<float>> inputs;
  const WhisperAudioState full = model.encode(audio, 1, &inputs);
  ASSERT_EQ(inputs.size(), 3u);  // two blocks, then ln_post
  for (int l = 0; l <= 2; ++l) {
    const WhisperAudioState r = model.encode_from(l, inputs[static_cast<size_t>(l)], 1);
    EXPECT_EQ(r.cross_k, full.cross_k) << l;
    EXPECT_EQ(r.cross_v, full.cross_v) << l;
  }
  EXPECT_THROW(model.encode_from(3, inputs[0], 1), std::invalid_argument);
  const std::vector<int> tokens = {model.prompt()[0], model.prompt()[1], 17, 42};
  const std::vector<float> base = model.forced_logits(full, tokens, 1);

  // An F32 file's weights read back unchanged through an override give the same logits; other
  // values change them, and clearing restores them.
  const WhisperFile f = WhisperFile::open(s.f32);
  for (const char* name : {"decoder.blocks.1.cross_attn.query.weight", "decoder.token_embedding.weight"}) {
    const WhisperTensor* t = f.find(name);
    std::vector<float> w(static_cast<size_t>(t->elements()));
    std::vector<uint8_t> bytes(t->data.begin(), t->data.end());
    dequantize_rows(t->type, bytes.data(), w.data(), t->rows(), t->ne[0]);
    model.set_weight_override(name, w);
    EXPECT_EQ(model.forced_logits(full, tokens, 1), base) << name;
    for (auto& v : w) v *= 1.5f;
    model.set_weight_override(name, w);
    EXPECT_NE(model.forced_logits(full, tokens, 1), base) << name;
    model.clear_weight_overrides();
    EXPECT_EQ(model.forced_logits(full, tokens, 1), base) << name;
  }
  // An encoder weight's override acts from its block on.
  const WhisperTensor* t = f.find("encoder.blocks.1.mlp.0.weight");
  model.set_weight_override(t->name, std::vector<float>(static_cast<size_t>(t->elements()), 0.01f));
  EXPECT_NE(model.encode_from(1, inputs[1], 1).cross_k, full.cross_k);
  EXPECT_EQ(model.encode(audio, 1).cross_k, model.encode_from(1, inputs[1], 1).cross_k);
  model.clear_weight_overrides();
  EXPECT_THROW(model.set_weight_override("encoder.blocks.0.attn_ln.weight", {1.0f}), std::invalid_argument);
  EXPECT_THROW(model.set_weight_override(t->name, {1.0f}), std::invalid_argument);
}

// The tensors of a Whisper measurement or plan, by part of the model.
std::map<std::string, int> parts_of(const std::vector<std::string>& names) {
  std::map<std::string, int> n;
  for (const auto& name : names) {
    if (name.starts_with("encoder.blocks.")) ++n["encoder"];
    if (name.find(".cross_attn.") != std::string::npos) ++n["cross"];
    if (name.starts_with("decoder.blocks.") && name.find(".attn.") != std::string::npos) ++n["decoder self"];
    if (name.find(".mlp.") != std::string::npos && name.starts_with("decoder.")) ++n["decoder mlp"];
    if (name == "decoder.token_embedding.weight") ++n["token embedding"];
  }
  return n;
}

TEST(WhisperMeasure, MeasurePlanAndQuantizeCoverEveryTensorWithinTheBudget) {
  SmallWhisper s;
  const WhisperFile f = WhisperFile::open(s.f16);
  WhisperMeasureOptions o;
  o.utterances = 2;
  o.threads = 2;
  o.types = {TypeId::Q4_0, TypeId::Q8_0, TypeId::F16};
  const Measurement m = measure_whisper(f, read_whisper_test_set(s.list), o);
  const std::vector<std::string> expected = whisper_quantizable_tensors(f);
  ASSERT_EQ(expected.size(), 2u * 6 + 2u * 10 + 1);  // encoder blocks, decoder blocks, token embedding
  std::vector<std::string> measured;
  for (const auto& t : m.tensors) measured.push_back(t.name);
  EXPECT_EQ(measured, expected);
  const auto parts = parts_of(measured);
  EXPECT_EQ(parts.at("encoder"), 12);
  EXPECT_EQ(parts.at("cross"), 8);
  EXPECT_EQ(parts.at("decoder self"), 8);
  EXPECT_EQ(parts.at("token embedding"), 1);
  EXPECT_GT(m.scored_tokens, 0);
  EXPECT_EQ(m.probe_runs, 2 * static_cast<int>(expected.size()));
  for (const auto& t : m.tensors) {
    ASSERT_EQ(t.candidates.size(), 3u) << t.name;
    EXPECT_EQ(t.candidates.back().type, TypeId::F16);
    EXPECT_EQ(t.candidates.back().predicted, 0.0) << t.name;  // the stored type: exact
    EXPECT_GT(t.candidates.front().error, t.candidates[1].error) << t.name;
    EXPECT_GE(t.alpha, 0.0) << t.name;
    EXPECT_TRUE(t.candidates.front().kld.has_value()) << t.name;  // q4_0 is the first probe
  }

  // The CLI on the same files: measure, plan at several sizes, quantize --plan.
  const fs::path meas = s.dir / "m.json";
  auto r = test::run_cli(fmt::format("measure '{}' -f '{}' --chunks 2 --types q4_0,q8_0,f16 -t 2 -o '{}'",
                                     s.f16.string(), s.list.string(), meas.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Measurement cli = Measurement::load(meas);
  ASSERT_EQ(cli.tensors.size(), m.tensors.size());
  EXPECT_EQ(cli.alignment, 1u);
  EXPECT_NE(test::run_cli(fmt::format("measure '{}' -f '{}' --ctx-size 64", s.f16.string(), s.list.string())).output.find(
                "--ctx-size is for GGUF models"),
            std::string::npos);

  uint64_t all_q4 = cli.header_bytes + cli.fixed_bytes, all_f16 = all_q4;
  for (const auto& t : cli.tensors) {
    all_q4 += t.candidates.front().bytes;
    all_f16 += t.candidates.back().bytes;
  }
  for (const double at : {0.0, 0.3, 0.7, 1.0}) {
    const uint64_t budget = all_q4 + static_cast<uint64_t>(at * static_cast<double>(all_f16 - all_q4));
    const fs::path plan_path = s.dir / "p.json", out = s.dir / "planned.bin";
    r = test::run_cli(fmt::format("plan '{}' --target-size {} -o '{}'", meas.string(), budget, plan_path.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Plan plan = Plan::load(plan_path);
    EXPECT_LE(plan.file_bytes, budget) << at;
    EXPECT_EQ(plan.tensors.size(), expected.size());
    r = test::run_cli(fmt::format("quantize --plan '{}' '{}' '{}'", plan_path.string(), s.f16.string(), out.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    // The size mixq plan counted is the file's, and every tensor has its planned type.
    EXPECT_EQ(fs::file_size(out), plan.file_bytes) << at;
    const WhisperFile q = WhisperFile::open(out, {.allow_mixed_weights = true});
    const auto types = plan.types();
    std::set<TypeId> used;
    for (const auto& t : q.tensors) {
      const auto it = types.find(t.name);
      if (it == types.end()) continue;
      EXPECT_EQ(t.type, it->second) << t.name;
      used.insert(t.type);
    }
    if (at == 0.0) {
      EXPECT_EQ(used, std::set<TypeId>{TypeId::Q4_0});
    } else if (at == 1.0) {
      EXPECT_EQ(used, std::set<TypeId>{TypeId::F16});
    } else if (at == 0.3) {
      EXPECT_GT(used.size(), 1u);
    }
  }
  // A plan is for the model it was measured on.
  r = test::run_cli(fmt::format("plan '{}' --target-size {} -o '{}'", meas.string(), all_f16, (s.dir / "p.json").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = test::run_cli(fmt::format("plan '{}' --target-size {} -o '{}'", meas.string(), all_q4 - 1, (s.dir / "x.json").string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("smallest possible"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace mixq
