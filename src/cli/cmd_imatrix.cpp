// `mixq imatrix`: an importance matrix from a calibration text, as llama-imatrix computes and
// writes it (llama.cpp's GGUF imatrix format, or the legacy .dat with --output-format dat).
#include <chrono>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/calib/imatrix_collect.h"
#include "progress.h"
#include "whisper_commands.h"
#include "mixq/io/whisper_file.h"

namespace mixq::cli {

namespace {

struct ImatrixOpts {
  std::string model, file, out = "imatrix.gguf", format = "gguf";
  int n_ctx = 512, chunks = 0, threads = 0;
  bool process_output = false, no_ppl = false, f64_sums = false, clean_stale = false;
};

void run_imatrix(const ImatrixOpts& o) {
  check_outputs({{"MODEL", o.model}, {"-f", o.file}}, {{"-o", o.out}}, o.clean_stale);
  check_chunks(o.chunks, "--chunks");
  checked_threads(o.threads);
  const std::string text = read_text_file(o.file);
  if (o.format == "gguf" && !o.out.ends_with(".gguf")) {
    fmt::print(stderr, "mixq: warning: writing the GGUF imatrix format to '{}' (no .gguf suffix); use "
                       "--output-format dat for the legacy format\n", o.out);
  }
  const GgufFile f = GgufFile::open(o.model);
  // Batches only: no decode layouts, whose prefill unpacks rows (load_model).
  const std::unique_ptr<Model> model = load_model(f, false);
  const Tokenizer tok = Tokenizer::from_gguf(f);
  ImatrixOptions opts;
  opts.n_ctx = o.n_ctx;
  opts.max_chunks = o.chunks;
  opts.threads = o.threads;
  opts.process_output = o.process_output;
  opts.compute_ppl = !o.no_ppl;
  opts.f32_sums = !o.f64_sums;
  opts.datasets = {o.file};  // as llama-imatrix records it: the path as given
  Progress bar("imatrix");
  const auto start = std::chrono::steady_clock::now();
  opts.on_chunk = [&](int done, int total, double ppl) {
    bar.update(static_cast<size_t>(done), static_cast<size_t>(total), o.no_ppl ? std::string() : fmt::format("PPL {:.4f}", ppl),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  const ImatrixResult r = collect_imatrix(*model, tok, text, opts);
  bar.finish();
  if (o.format == "dat") {
    write_imatrix_dat(r.matrix, o.out);
  } else {
    write_imatrix_gguf(r.matrix, o.out);
  }
  fmt::print("{} chunks of {} tokens ({} tokens), {} tensors collected, {:.1f} s\n", r.chunks, o.n_ctx, r.tokens,
             r.matrix.sums.size(), r.seconds);
  if (!o.no_ppl) fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_error);
  fmt::print("wrote {} ({} format)\n", o.out, o.format);
}

}  // namespace

void register_imatrix(CLI::App& app) {
  auto* cmd = app.add_subcommand("imatrix", "Importance matrix from a calibration text, as llama-imatrix computes it");
  auto o = std::make_shared<ImatrixOpts>();
  cmd->add_option("MODEL", o->model, "Model (GGUF, or a whisper.cpp file)")->required();
  cmd->add_option("-f,--file", o->file,
                  "Calibration text file; for a whisper.cpp model a list of AUDIO.wav<TAB>text lines")
      ->required();
  cmd->add_option("-o,--output", o->out, "Output file")->capture_default_str();
  cmd->add_option("-c,--ctx-size", o->n_ctx, "Tokens per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Process only the first N chunks (0: all; negative is refused)");
  add_threads_option(cmd, o->threads);
  add_clean_stale_flag(cmd, o->clean_stale);
  cmd->add_option("--output-format", o->format, "gguf (llama.cpp's GGUF imatrix) or dat (legacy)")
      ->check(CLI::IsMember({"gguf", "dat"}))
      ->capture_default_str();
  cmd->add_flag("--process-output", o->process_output, "Also collect output.weight (llama-imatrix leaves it out by default)");
  cmd->add_flag("--no-ppl", o->no_ppl, "Do not compute the perplexity");
  cmd->add_flag("--f64-sums", o->f64_sums,
                "Accumulate in double (exact) instead of llama-imatrix's float sums (which drift by up to ~1e-3 "
                "relative over a long text)");
  cmd->callback([o, cmd] {
    // whisper.cpp files: collected while transcribing a spoken calibration list (whisper_commands.cpp).
    if (is_whisper_file(o->model)) return run_whisper_imatrix(*cmd, {o->model, o->file, o->out, o->format, o->threads});
    run_imatrix(*o);
  });
}

}  // namespace mixq::cli
