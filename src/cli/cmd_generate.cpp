#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/engine/sampler.h"
#include "mixq/engine/tokenizer.h"

namespace mixq::cli {

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming tokens");
  struct Opts {
    std::string model, prompt;
    int n = 128, threads = 0, ctx = 0, top_k = 40;
    std::string attention = "f16";
    float temp = 0.8f, top_p = 0.95f;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->model, "Model (GGUF)")->required();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("-n,--n-predict", o->n, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temp", o->temp, "Temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "Top-k (0: off)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "Top-p (1: off)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_option("-c,--ctx-size", o->ctx, "Context (default: the model's, at most prompt + n)");
  cmd->add_option("-t,--threads", o->threads, fmt::format("Threads (default: all cores; at most {})", kMaxThreads));
  cmd->add_option("--attention", o->attention, "Attention numerics: f16 (llama.cpp's reference figures, default), tiled (F32 tiles over an F16 cache, as newer llama.cpp builds compute it), f32");
  cmd->callback([o] {
    if (o->prompt.empty()) throw std::runtime_error("the prompt is empty: give -p TEXT");
    checked_threads(o->threads);
    if (o->n < 0) throw std::runtime_error(fmt::format("-n {}: give a number of tokens >= 0", o->n));
    if (!std::isfinite(o->temp) || o->temp < 0) {
      throw std::runtime_error(fmt::format("--temp {}: give a finite temperature >= 0 (0: greedy)", o->temp));
    }
    if (!(o->top_p > 0 && o->top_p <= 1)) {
      throw std::runtime_error(fmt::format("--top-p {}: give a probability in (0, 1] (1: off)", o->top_p));
    }
    if (o->top_k < 0) throw std::runtime_error(fmt::format("--top-k {}: give a count >= 0 (0: off)", o->top_k));
    if (o->ctx < 0) throw std::runtime_error(fmt::format("-c {}: give a context >= 1 (0: the model's)", o->ctx));
    const GgufFile f = GgufFile::open(o->model);
    const std::unique_ptr<Model> model = load_model(f);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    const std::vector<int32_t> prompt = tok.encode(o->prompt, true);
    // In 64 bits: prompt + n overflows int for -n near INT_MAX.
    const int64_t wanted = static_cast<int64_t>(prompt.size()) + o->n;
    const int n_ctx = o->ctx > 0               ? o->ctx
                      : model->max_context() > 0 ? static_cast<int>(std::min<int64_t>(model->max_context(), wanted))
                                               : static_cast<int>(std::min<int64_t>(wanted, INT_MAX));
    if (static_cast<int>(prompt.size()) >= n_ctx) {
      throw std::runtime_error(fmt::format("the prompt has {} tokens, the context only {}", prompt.size(), n_ctx));
    }
    const std::unique_ptr<Context> ctx = model->new_context(n_ctx, o->threads);
    ctx->set_attention(parse_attention_mode(o->attention));
    Sampler sampler({o->temp, o->top_k, o->top_p, o->seed});
    // The prompt as typed (the tokenizer's leading space is not echoed).
    fmt::print("{}", o->prompt);
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float>* logits = &ctx->eval(prompt, false);
    const auto t1 = std::chrono::steady_clock::now();
    int generated = 0;
    for (; generated < o->n && ctx->n_past() < n_ctx; ++generated) {
      const int32_t next = sampler.sample(logits->data(), ctx->n_vocab());
      if (next == tok.eos()) break;
      fmt::print("{}", tok.decode_token(next));
      std::fflush(stdout);  // stream tokens as they come
      std::fflush(stdout);
      if (ctx->n_past() + 1 > n_ctx) break;
      logits = &ctx->eval({next}, false);
    }
    const auto t2 = std::chrono::steady_clock::now();
    const double prompt_s = std::chrono::duration<double>(t1 - t0).count();
    const double gen_s = std::chrono::duration<double>(t2 - t1).count();
    fmt::print("\n");
    std::fflush(stdout);
    fmt::print(stderr, "prompt: {} tokens, {:.1f} tokens/s; generation: {} tokens, {:.1f} tokens/s\n", prompt.size(),
               prompt.size() / std::max(prompt_s, 1e-9), generated, generated / std::max(gen_s, 1e-9));
  });
}

}  // namespace mixq::cli
