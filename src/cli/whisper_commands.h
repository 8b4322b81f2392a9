// whisper.cpp model files in `mixq convert` and `mixq quantize`: both commands hand a Whisper input
// to these functions (one line each in cmd_convert.cpp / cmd_quantize.cpp), which write
// whisper.cpp's own format instead of GGUF.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mixq/formats/type_table.h"

namespace mixq::cli {

// mixq quantize's options as parsed, for a whisper.cpp input.
struct WhisperQuantizeArgs {
  std::string input, output, type, threads_pos;
  std::vector<std::string> tensor_types;
  std::string tensor_type_file, token_embedding_type, compat, report_json;
  int threads = 0;
  bool dry_run = false, allow_requantize = false;
  std::string plan;     // --plan: a plan from a Whisper measurement (mixq measure MODEL.bin -f LIST.tsv, mixq plan)
  std::string imatrix;  // --imatrix: an importance matrix of this model (mixq imatrix MODEL.bin -f LIST.tsv)
};

// Whether INPUT is a Whisper model (a whisper.cpp file, or a CTranslate2 / Hugging Face model, which
// is converted to a temporary F16 whisper.cpp file first): `mixq quantize` then runs run_whisper_quantize.
bool is_whisper_quantize_input(const std::string& input);
// `mixq quantize [--tensor-type REGEX=TYPE ...] IN OUT TYPE` on a whisper.cpp file; with --plan,
// TYPE may be left out (the header's type is then the plan's quantized type with the most bytes). Options of
// `cmd` that do not apply to Whisper (imatrix, plans, layers, ...) are refused by name.
void run_whisper_quantize(const CLI::App& cmd, const WhisperQuantizeArgs& a);

// `mixq convert` on a Whisper model (CTranslate2, Hugging Face, whisper.cpp): writes a whisper.cpp
// file and returns true; false when INPUT is not a Whisper model.
bool convert_whisper_if_whisper(const std::string& input, const std::string& output, std::optional<TypeId> outtype);

// `mixq inspect` on a whisper.cpp file: prints its report and returns true; false for other files.
bool inspect_whisper_if_whisper(const std::string& file, bool json, bool show_tensors);

// `mixq kld MODEL.bin [MODEL2.bin ...] --base F16.bin -f LIST.tsv` (eval/whisper_eval.h): word error
// rates and teacher-forced KLD. Options of `cmd` that are for GGUF models are refused by name.
struct WhisperKldArgs {
  std::vector<std::string> models;
  std::string base, list;
  int threads = 0;
  bool json = false;
  std::optional<double> max_kld;
};
void run_whisper_kld(const CLI::App& cmd, const WhisperKldArgs& a);

// `mixq imatrix MODEL.bin -f LIST.tsv -o OUT.imatrix.gguf` (calib/whisper_imatrix.h).
struct WhisperImatrixArgs {
  std::string model, list, out, format;
  int threads = 0;
};
void run_whisper_imatrix(const CLI::App& cmd, const WhisperImatrixArgs& a);

// `mixq transcribe MODEL -f AUDIO.wav`: engine/whisper_model.h on a whisper.cpp file.
void register_transcribe(CLI::App& app);

}  // namespace mixq::cli
