#include "whisper_commands.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <filesystem>
#include <map>
#include <tuple>
#include <optional>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/convert/whisper_convert.h"
#include "mixq/engine/whisper_audio.h"
#include "mixq/engine/whisper_model.h"
#include "mixq/calib/imatrix.h"
#include "mixq/calib/imatrix_collect.h"
#include "mixq/calib/whisper_imatrix.h"
#include "mixq/eval/whisper_eval.h"
#include "mixq/io/whisper_file.h"
#include "mixq/io/whisper_inspect.h"
#include "mixq/plan/plan.h"
#include "mixq/policy/policy.h"
#include "mixq/quantize/whisper_quantize.h"
#include "option_helpers.h"
#include "progress.h"

namespace mixq::cli {

namespace fs = std::filesystem;

bool is_whisper_quantize_input(const std::string& input) { return detect_whisper_source(input).has_value(); }

void run_whisper_quantize(const CLI::App& cmd, const WhisperQuantizeArgs& a) {
  // GGUF-only options: importance matrices, plans and layer rules need mixq's LLM engine.
  for (const char* opt : {"--target-bpw", "--target-size", "--target-size-of", "--file",
                          "--layers", "--config", "--output-tensor-type", "--outliers", "--outlier-tensors", "--calib",
                          "--symmetric", "--hqq", "--leave-output-tensor", "--save-plan", "--save-measurement"}) {
    if (cmd.count(opt) > 0) {
      throw PolicyError(fmt::format("{} does not apply to a whisper.cpp model ('{}'): its options are "
                                    "--tensor-type, --tensor-type-file, --token-embedding-type, --allow-requantize, "
                                    "--imatrix, --plan, --compat whisper.cpp, --dry-run, --report-json, -t",
                                    opt, a.input));
    }
  }
  WhisperQuantizeOptions o;
  std::string type = a.type;
  std::optional<Plan> plan_file;
  if (!a.plan.empty()) {
    const Plan& plan = plan_file.emplace(Plan::load(a.plan));
    o.plan = plan.types();
    for (const auto& t : plan.tensors) {
      if (t.outliers > 0) throw PolicyError(fmt::format("--plan {}: whisper.cpp files keep no outlier columns", a.plan));
    }
    if (type.empty()) {  // the header's type: the plan's quantized type with the most bytes
      std::map<TypeId, uint64_t> bytes;
      for (const auto& t : plan.tensors) {
        if (type_traits(t.type).quantized) bytes[t.type] += t.bytes;
      }
      TypeId best = TypeId::F16;
      uint64_t most = 0;
      for (const auto& [t, b] : bytes) {
        if (b > most) std::tie(best, most) = std::pair{t, b};
      }
      type = type_traits(best).name;
    }
  }
  if (type.empty()) throw PolicyError("give a DEFAULT_TYPE: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k .. q6_k, f16 or f32");
  // whisper.cpp's quantize also takes ggml's ftype numbers (2 = q4_0, 7 = q8_0, 12 = q4_k, ...).
  if (type.find_first_not_of("0123456789") == std::string::npos && type.size() < 6) {
    const auto t = whisper_weight_type(std::stoi(type));
    if (!t) {
      throw PolicyError(fmt::format("DEFAULT_TYPE {}: not an ftype whisper.cpp loads (0, 1, 2, 3, 7, 8, 9, 10-14)", type));
    }
    o.default_type = *t;
  } else {
    o.default_type = parse_type_name(type);
  }
  for (const auto& r : a.tensor_types) o.rules.push_back(parse_tensor_type_rule(r));
  if (!a.tensor_type_file.empty()) {
    for (const auto& r : read_rule_file(a.tensor_type_file)) o.rules.push_back(parse_tensor_type_rule(r));
  }
  if (!a.token_embedding_type.empty()) o.token_embedding_type = parse_type_name(a.token_embedding_type);
  if (!a.compat.empty()) {
    if (a.compat != "whisper.cpp" && a.compat != "whispercpp") {
      throw PolicyError(fmt::format("--compat '{}': for a whisper.cpp model the target is whisper.cpp", a.compat));
    }
    o.compat_whisper_cpp = true;
  }
  o.allow_requantize = a.allow_requantize;
  std::optional<ImportanceMatrix> im;
  if (!a.imatrix.empty()) {
    im = load_imatrix(a.imatrix);
    o.imatrix = &*im;
  }
  o.threads = positional_threads(a.threads_pos, a.threads);
  o.threads = checked_threads(o.threads);
  // A CTranslate2 or Hugging Face Whisper model is converted to a temporary F16 whisper.cpp file
  // beside the output first (removed on exit and on interruption).
  std::optional<TemporaryPath> converted;
  std::string source = a.input;
  if (!is_whisper_file(a.input)) {
    converted.emplace(a.output, ".whisper-f16.bin");
    convert_whisper(a.input, converted->path(), TypeId::F16);
    source = converted->path().string();
  }
  const WhisperFile in = WhisperFile::open(source, {.allow_mixed_weights = true});
  const WhisperQuantizeReport rep = a.dry_run ? plan_whisper_quantize(in, o) : quantize_whisper(in, a.output, o);
  fmt::print("{}", rep.to_text());
  for (const auto& w : rep.warnings) fmt::print(stderr, "mixq: warning: {}\n", w);
  if (!a.report_json.empty()) write_file_atomically(a.report_json, rep.to_json().dump(2) + "\n");
  if (!a.dry_run) fmt::print("wrote {}\n", a.output);
  if (plan_file && !a.dry_run && plan_file->target.is_bytes() && fs::file_size(a.output) > plan_file->budget_bytes) {
    fmt::print(stderr, "mixq: warning: the file ({} bytes) exceeds the plan's budget ({} bytes): was the plan made "
                       "from a measurement of another file?\n",
               fs::file_size(a.output), plan_file->budget_bytes);
  }
}

bool convert_whisper_if_whisper(const std::string& input, const std::string& output, std::optional<TypeId> outtype) {
  if (!detect_whisper_source(input)) return false;
  const WhisperConvertResult r = convert_whisper(input, output, outtype);
  for (const auto& w : r.warnings) fmt::print(stderr, "mixq: warning: {}\n", w);
  fmt::print("wrote {} (whisper.cpp format) from a {} model: {} tensors, {} bytes\n", output,
             whisper_source_name(r.source), r.tensors, r.bytes_written);
  return true;
}

bool inspect_whisper_if_whisper(const std::string& file, bool json, bool show_tensors) {
  if (!is_whisper_file(file)) return false;
  const WhisperFile f = WhisperFile::open(file, {.allow_mixed_weights = true});
  if (json) {
    fmt::print("{}\n", whisper_inspect_json(f).dump(2));
  } else {
    fmt::print("{}", whisper_inspect_text(f, show_tensors));
  }
  return true;
}

namespace {

nlohmann::ordered_json word_errors_json(const WordErrors& e) {
  nlohmann::ordered_json j;
  j["wer"] = e.rate();
  j["errors"] = e.errors();
  j["words"] = e.reference_words;
  j["substitutions"] = e.substitutions;
  j["deletions"] = e.deletions;
  j["insertions"] = e.insertions;
  return j;
}

std::string word_errors_text(const WordErrors& e) {
  return fmt::format("{:.2f}% ({} errors in {} words: {} substituted, {} deleted, {} inserted)", 100 * e.rate(),
                     e.errors(), e.reference_words, e.substitutions, e.deletions, e.insertions);
}

}  // namespace

void run_whisper_kld(const CLI::App& cmd, const WhisperKldArgs& a) {
  for (const char* opt : {"--base-logits", "--save-base", "--ctx-size", "--chunks", "--attention", "--activations",
                          "--max-ppl-increase"}) {
    if (cmd.count(opt) > 0) {
      throw std::runtime_error(fmt::format("{} is for GGUF models; for whisper.cpp models kld takes MODEL... --base "
                                           "F16.bin -f LIST.tsv [-t N] [--json] [--max-kld X]",
                                           opt));
    }
  }
  if (a.base.empty()) throw std::runtime_error("whisper kld: give --base REF.bin (the F16 or F32 model)");
  if (a.max_kld && !(std::isfinite(*a.max_kld) && *a.max_kld >= 0)) {
    throw std::runtime_error(fmt::format("bad --max-kld {}: the limit must be a finite number >= 0", *a.max_kld));
  }
  const int threads = checked_threads(a.threads);
  const std::vector<WhisperTestItem> items = read_whisper_test_set(a.list);
  const WhisperModel base(WhisperFile::open(a.base, {.allow_mixed_weights = true}));
  std::vector<WhisperModel> models;
  models.reserve(a.models.size());
  for (const auto& m : a.models) models.emplace_back(WhisperFile::open(m, {.allow_mixed_weights = true}));
  std::vector<const WhisperModel*> ptrs;
  for (const auto& m : models) ptrs.push_back(&m);

  Progress bar("kld");
  const auto start = std::chrono::steady_clock::now();
  WhisperEvalOptions opts;
  opts.threads = threads;
  opts.on_utterance = [&](size_t done, size_t total, const WhisperEvalResult& r) {
    const double kld = r.tokens.size() == 0 ? 0.0 : [&] {
      double s = 0;
      for (double v : r.tokens.kld) s += v;
      return s / static_cast<double>(r.tokens.size());
    }();
    bar.update(done, total,
               fmt::format("WER {:.2f}% vs {:.2f}%, KLD {:.6f}", 100 * r.model_errors.rate(),
                           100 * r.base_errors.rate(), kld),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  std::vector<WhisperEvalResult> results;
  try {
    results = evaluate_whisper(base, ptrs, items, opts);
  } catch (...) {
    bar.finish();
    throw;
  }
  bar.finish();

  std::vector<std::string> failures;
  nlohmann::ordered_json all = nlohmann::ordered_json::array();
  for (size_t k = 0; k < results.size(); ++k) {
    const WhisperEvalResult& r = results[k];
    for (const auto& f : check_quality_gate(r.stats, std::nullopt, a.max_kld)) {
      failures.push_back(fmt::format("{}: {}", a.models[k], f));
    }
    if (a.json) {
      nlohmann::ordered_json j;
      j["model"] = a.models[k];
      j["base"] = a.base;
      j["test_set"] = a.list;
      j["utterances"] = items.size();
      j["wer_base"] = word_errors_json(r.base_errors);
      j["wer_model"] = word_errors_json(r.model_errors);
      j["kld_scoring"] = "teacher-forced on the base's greedy tokens";
      j.update(r.stats.to_json());
      j.erase("chunks");
      j.erase("n_ctx");
      j["seconds"] = r.seconds;
      nlohmann::ordered_json per = nlohmann::ordered_json::array();
      for (const auto& u : r.utterances) {
        per.push_back({{"reference", u.reference}, {"base", u.base_text}, {"model", u.model_text},
                       {"base_errors", u.base_errors.errors()}, {"model_errors", u.model_errors.errors()},
                       {"words", u.model_errors.reference_words}, {"tokens", u.scored_tokens},
                       {"mean_kld", u.scored_tokens ? u.kld_sum / u.scored_tokens : 0.0}});
      }
      j["per_utterance"] = per;
      all.push_back(j);
      continue;
    }
    const KldStats& s = r.stats;
    if (k > 0) fmt::print("\n");
    fmt::print("model: {}\nbase:  {}\n", a.models[k], a.base);
    fmt::print("{} utterances ({}), {} tokens scored (teacher-forced on the base's greedy tokens), {:.1f} s\n",
               items.size(), a.list, s.tokens, r.seconds);
    fmt::print("WER(base)  = {}\n", word_errors_text(r.base_errors));
    fmt::print("WER(model) = {}\n", word_errors_text(r.model_errors));
    fmt::print("Mean KLD:   {:.6f} +/- {:.6f}\n", s.kld.value, s.kld.error);
    fmt::print("Median KLD: {:.6f}, 99% KLD: {:.6f}, max KLD: {:.6f}\n", s.kld_q.median, s.kld_q.p99, s.kld_q.max);
    fmt::print("Same top token: {:.3f} +/- {:.3f} %\n", 100 * s.same_top.value, 100 * s.same_top.error);
    fmt::print("PPL of the base's tokens: base {:.4f}, model {:.4f} (ratio {:.4f})\n", s.ppl_base.value,
               s.ppl_model.value, s.ppl_ratio.value);
  }
  if (a.json) fmt::print("{}\n", (all.size() == 1 ? all[0] : all).dump(2));
  if (!failures.empty()) {
    std::fflush(stdout);
    for (const auto& f : failures) fmt::print(stderr, "mixq: quality gate failed: {}\n", f);
    throw CLI::RuntimeError(3);
  }
}

void run_whisper_imatrix(const CLI::App& cmd, const WhisperImatrixArgs& a) {
  for (const char* opt : {"--ctx-size", "--chunks", "--process-output", "--no-ppl", "--f64-sums"}) {
    if (cmd.count(opt) > 0) {
      throw std::runtime_error(fmt::format("{} is for GGUF models; for a whisper.cpp model imatrix takes MODEL.bin "
                                           "-f LIST.tsv (AUDIO.wav<TAB>text lines) -o OUT [-t N] [--output-format]",
                                           opt));
    }
  }
  check_outputs({{"MODEL", a.model}, {"-f", a.list}}, {{"-o", a.out}}, false);
  const int threads = checked_threads(a.threads);
  const std::vector<WhisperTestItem> items = read_whisper_test_set(a.list);
  WhisperModel model(WhisperFile::open(a.model, {.allow_mixed_weights = true}));
  Progress bar("imatrix");
  const auto start = std::chrono::steady_clock::now();
  WhisperImatrixResult r = collect_whisper_imatrix(model, items, threads, [&](size_t done, size_t total) {
    bar.update(done, total, "", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  });
  bar.finish();
  r.matrix.datasets = {a.list};
  if (a.format == "dat") {
    write_imatrix_dat(r.matrix, a.out);
  } else {
    write_imatrix_gguf(r.matrix, a.out);
  }
  fmt::print("{} utterances ({} decoder tokens), {} tensors collected, {:.1f} s\nwrote {} ({} format)\n",
             r.utterances, r.decoder_tokens, r.matrix.sums.size(), r.seconds, a.out, a.format);
}

void register_transcribe(CLI::App& app) {
  auto* cmd = app.add_subcommand("transcribe", "Speech to text with a whisper.cpp model file (greedy, one 30 s window)");
  struct Opts {
    std::string model, wav, dump_logits;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->model, "whisper.cpp model file (any types it holds, mixed included)")->required();
  cmd->add_option("-f,--file", o->wav, "16 kHz mono 16-bit PCM WAV file")->required();
  add_threads_option(cmd, o->threads);
  cmd->add_option("--dump-logits", o->dump_logits,
                  "Also write the decoder's logits, teacher-forced on the prompt and the transcript, to this file "
                  "(eval/whisper_eval.h's MXWL layout; scripts/whisper_cpp_logits.sh gives whisper.cpp's)");
  cmd->callback([o] {
    const int threads = checked_threads(o->threads);
    if (!o->dump_logits.empty()) check_outputs({{"MODEL", o->model}, {"-f", o->wav}}, {{"--dump-logits", o->dump_logits}}, false);
    const WhisperFile f = WhisperFile::open(o->model, {.allow_mixed_weights = true});
    const WhisperModel model(f);
    const auto samples = read_wav_16k_mono(o->wav);
    const WhisperAudioState audio = model.encode(samples, threads);
    const WhisperTranscript t = model.decode_greedy(audio, threads);
    fmt::print("{}\n", t.text);
    if (!o->dump_logits.empty()) {
      std::vector<int> seq = model.prompt();
      seq.insert(seq.end(), t.tokens.begin(), t.tokens.end());
      write_whisper_logits(o->dump_logits, seq, model.forced_logits(audio, seq, threads), model.n_vocab());
    }
  });
}

}  // namespace mixq::cli
