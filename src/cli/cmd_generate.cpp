#include <chrono>
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
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  cmd->add_option("--attention", o->attention, "Attention numerics: f16 (llama.cpp's reference figures, default), tiled (F32 tiles over an F16 cache, as newer llama.cpp builds compute it), f32");
  cmd->callback([o] {
    if (o->prompt.empty()) throw std::runtime_error("the prompt is empty: give -p TEXT");
    const GgufFile f = GgufFile::open(o->model);
    const std::unique_ptr<Model> model = load_model(f);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    const std::vector<int32_t> prompt = tok.encode(o->prompt, true);
    const int n_ctx = o->ctx > 0 ? o->ctx : model->max_context() > 0 ? std::min(model->max_context(), static_cast<int>(prompt.size()) + o->n)
                                                       : static_cast<int>(prompt.size()) + o->n;
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
