#include <chrono>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/eval/perplexity.h"
#include "progress.h"

namespace mixq::cli {

void register_perplexity(CLI::App& app) {
  auto* cmd = app.add_subcommand("perplexity", "Perplexity of a model on a text, as llama-perplexity computes it");
  struct Opts {
    std::string model, file;
    int n_ctx = 512, chunks = 0, threads = 0;
    std::string attention = "f16";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->model, "Model (GGUF)")->required();
  cmd->add_option("-f,--file", o->file, "Text file (e.g. wiki.test.raw)")->required();
  cmd->add_option("-c,--ctx-size", o->n_ctx, "Context per chunk")->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Score only the first N chunks (0: all)");
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->add_option("--attention", o->attention, "Attention numerics: f16 (llama.cpp's reference figures, default), tiled (F32 tiles over an F16 cache, as newer llama.cpp builds compute it), f32");
  cmd->callback([o] {
    std::ifstream in(o->file, std::ios::binary);
    if (!in) throw std::runtime_error(fmt::format("cannot read '{}'", o->file));
    std::stringstream ss;
    ss << in.rdbuf();
    const GgufFile f = GgufFile::open(o->model);
    const std::unique_ptr<Model> model = load_model(f);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    Progress bar("perplexity");
    PerplexityOptions opts{o->n_ctx, o->chunks, o->threads, nullptr};
    opts.attention = parse_attention_mode(o->attention);
    const auto start = std::chrono::steady_clock::now();
    opts.on_chunk = [&](int done, int total, double ppl) {
      bar.update(static_cast<size_t>(done), static_cast<size_t>(total), fmt::format("PPL {:.4f}", ppl),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    };
    const PerplexityResult r = perplexity(*model, tok, ss.str(), opts);
    bar.finish();
    fmt::print("{} chunks of {} tokens, {} tokens scored, {:.1f} s\n", r.chunks, o->n_ctx, r.scored_tokens, r.seconds);
    fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_error);
  });
}

}  // namespace mixq::cli
