#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/eval/perplexity.h"
#include "mixq/io/tensor_check.h"
#include "progress.h"

namespace mixq::cli {

void explain_failure(const GgufFile& f, const std::string& label, const std::runtime_error& e) {
  // The engine does not check weights; when an evaluation fails, a non-finite weight is the
  // likeliest cause worth naming.
  if (const auto bad = find_non_finite_tensor(f)) {
    throw std::runtime_error(fmt::format("{}: '{}' is broken: {} (re-convert or re-quantize it from a good source)",
                                         e.what(), label, *bad));
  }
  throw e;
}

void throw_non_finite(const GgufFile& f, const std::string& label) {
  std::fflush(stdout);
  if (const auto bad = find_non_finite_tensor(f)) {
    throw std::runtime_error(fmt::format("'{}': the result is not a number because {}: the model is broken (re-convert "
                                         "or re-quantize it from a good source)",
                                         label, *bad));
  }
  throw std::runtime_error(fmt::format("'{}': the result is not a finite number, though every tensor is finite "
                                       "(an overflow in the forward pass?)",
                                       label));
}

void register_perplexity(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of a model on a text, as llama-perplexity computes it");
  struct Opts {
    std::string model, file;
    int n_ctx = 512, chunks = 0, threads = 0;
    std::string attention = "f16", activations = "f32";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->model, "Model (GGUF)")->required();
  cmd->add_option("-f,--file", o->file, "Text file (e.g. wiki.test.raw)")->required();
  cmd->add_option("-c,--ctx-size", o->n_ctx, "Context per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Score only the first N chunks (0: all; negative is refused)");
  add_threads_option(cmd, o->threads);
  add_attention_option(cmd, o->attention);
  cmd->add_option("--activations", o->activations, "Activation precision, emulated: every matrix product's input rounded to f32 (none, the default), f16, bf16 or q8 (Q8_0 blocks of 32)");
  cmd->callback([o] {
    set_default_activation_precision(parse_activation_precision(o->activations));
    check_chunks(o->chunks, "--chunks");
    checked_threads(o->threads);
    const std::string text = read_text_file(o->file);
    const GgufFile f = GgufFile::open(o->model);
    // Batches only (chunks of n_ctx): no decode layouts, whose prefill unpacks rows (load_model).
    const std::unique_ptr<Model> model = load_model(f, false);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    Progress bar("perplexity");
    PerplexityOptions opts{o->n_ctx, o->chunks, o->threads, nullptr};
    opts.attention = parse_attention_mode(o->attention);
    const auto start = std::chrono::steady_clock::now();
    opts.on_chunk = [&](int done, int total, double ppl) {
      bar.update(static_cast<size_t>(done), static_cast<size_t>(total), fmt::format("PPL {:.4f}", ppl),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    };
    PerplexityResult r;
    try {
      r = perplexity(*model, tok, text, opts);
    } catch (const std::runtime_error& e) {
      bar.finish();
      explain_failure(f, o->model, e);
    }
    bar.finish();
    fmt::print("{} chunks of {} tokens, {} tokens scored, {:.1f} s\n", r.chunks, o->n_ctx, r.scored_tokens, r.seconds);
    fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_error);
    if (!std::isfinite(r.ppl)) throw_non_finite(f, o->model);
  });
}

}  // namespace mixq::cli
