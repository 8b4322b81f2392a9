#include "whisper_commands.h"

#include <fstream>
#include <optional>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/convert/whisper_convert.h"
#include "mixq/engine/whisper_audio.h"
#include "mixq/engine/whisper_model.h"
#include "mixq/io/whisper_file.h"
#include "mixq/io/whisper_inspect.h"
#include "mixq/policy/policy.h"
#include "mixq/quantize/whisper_quantize.h"
#include "option_helpers.h"

namespace mixq::cli {

bool is_whisper_quantize_input(const std::string& input) { return detect_whisper_source(input).has_value(); }

void run_whisper_quantize(const CLI::App& cmd, const WhisperQuantizeArgs& a) {
  // GGUF-only options: importance matrices, plans and layer rules need mixq's LLM engine.
  for (const char* opt : {"--imatrix", "--plan", "--target-bpw", "--target-size", "--target-size-of", "--file",
                          "--layers", "--config", "--output-tensor-type", "--outliers", "--outlier-tensors", "--calib",
                          "--symmetric", "--hqq", "--leave-output-tensor", "--save-plan", "--save-measurement"}) {
    if (cmd.count(opt) > 0) {
      throw PolicyError(fmt::format("{} does not apply to a whisper.cpp model ('{}'): its options are "
                                    "--tensor-type, --tensor-type-file, --token-embedding-type, --allow-requantize, "
                                    "--compat whisper.cpp, --dry-run, --report-json, -t",
                                    opt, a.input));
    }
  }
  if (a.type.empty()) throw PolicyError("give a DEFAULT_TYPE: q4_0, q4_1, q5_0, q5_1, q8_0, q2_k .. q6_k, f16 or f32");
  WhisperQuantizeOptions o;
  // whisper.cpp's quantize also takes ggml's ftype numbers (2 = q4_0, 7 = q8_0, 12 = q4_k, ...).
  if (a.type.find_first_not_of("0123456789") == std::string::npos && a.type.size() < 6) {
    const auto t = whisper_weight_type(std::stoi(a.type));
    if (!t) {
      throw PolicyError(fmt::format("DEFAULT_TYPE {}: not an ftype whisper.cpp loads (0, 1, 2, 3, 7, 8, 9, 10-14)", a.type));
    }
    o.default_type = *t;
  } else {
    o.default_type = parse_type_name(a.type);
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
  o.threads = a.threads;
  if (!a.threads_pos.empty()) {
    try {
      o.threads = std::stoi(a.threads_pos);
    } catch (const std::exception&) {
      throw PolicyError(fmt::format("THREADS '{}' is not a number", a.threads_pos));
    }
  }
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

void register_transcribe(CLI::App& app) {
  auto* cmd = app.add_subcommand("transcribe", "Speech to text with a whisper.cpp model file (greedy, one 30 s window)");
  struct Opts {
    std::string model, wav;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->model, "whisper.cpp model file (any types it holds, mixed included)")->required();
  cmd->add_option("-f,--file", o->wav, "16 kHz mono 16-bit PCM WAV file")->required();
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->callback([o] {
    const int threads = checked_threads(o->threads);
    const WhisperFile f = WhisperFile::open(o->model, {.allow_mixed_weights = true});
    const WhisperModel model(f);
    const auto samples = read_wav_16k_mono(o->wav);
    fmt::print("{}\n", model.transcribe(samples, threads).text);
  });
}

}  // namespace mixq::cli
