#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <optional>

#include <fmt/format.h>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/engine/sampler.h"
#include "mixq/engine/speculative.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/eval/scores.h"

namespace mixq::cli {

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// A companion file (--draft, --prefill-model) loaded beside the main one.
struct Loaded {
  GgufFile file;
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tok;
};
std::unique_ptr<Loaded> load_companion(const std::string& path) {
  auto l = std::make_unique<Loaded>(Loaded{GgufFile::open(path), nullptr, std::nullopt});
  l->model = load_model(l->file);
  l->tok = Tokenizer::from_gguf(l->file);
  return l;
}

}  // namespace

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming tokens");
  struct Opts {
    std::string model, prompt, draft, prefill_model;
    int n = 128, threads = 0, ctx = 0, top_k = 40, draft_max = 8;
    std::string attention = "f16", activations = "f32";
    float temp = 0.8f, top_p = 0.95f, draft_min = 0.0f;
    uint64_t seed = 0;
    bool prefill_kld = false, draft_baseline = false;
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
  add_threads_option(cmd, o->threads);
  add_attention_option(cmd, o->attention);
  cmd->add_option("--activations", o->activations, "Activation precision, emulated: every matrix product's input rounded to f32 (none, the default), f16, bf16 or q8 (Q8_0 blocks of 32); every model of the run");
  cmd->add_option("--draft", o->draft,
                  "Speculative decoding: a draft model (GGUF) of the same architecture and vocabulary, usually a "
                  "low-bit quantization of MODEL; the output follows MODEL's distribution (at --temp 0: MODEL's "
                  "greedy output)");
  cmd->add_option("--draft-max", o->draft_max, "Speculative decoding: tokens the draft proposes per round")
      ->capture_default_str();
  cmd->add_option("--draft-min", o->draft_min,
                  "Speculative decoding: stop proposing once the draft's probability of its token is below P (0: "
                  "always --draft-max)")
      ->capture_default_str();
  cmd->add_flag("--draft-baseline", o->draft_baseline,
                "With --draft: then run MODEL alone for as many tokens (same prompt and sampling, text not printed) "
                "and print its tokens/s and the speedup");
  cmd->add_option("--prefill-model", o->prefill_model,
                  "Evaluate the prompt with this file (same architecture and vocabulary, e.g. a lower-precision "
                  "quantization), then generate with MODEL on the cache/state it produced");
  cmd->add_flag("--prefill-kld", o->prefill_kld,
                "With --prefill-model: also run the prompt on MODEL and report the KL divergence of the generated "
                "tokens' distributions (MODEL throughout || prefill by --prefill-model) and both prompt speeds");
  cmd->callback([o] {
    if (o->prompt.empty()) throw std::runtime_error("the prompt is empty: give -p TEXT");
    set_default_activation_precision(parse_activation_precision(o->activations));
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
    if (o->draft_max < 1) throw std::runtime_error(fmt::format("--draft-max {}: give a count >= 1", o->draft_max));
    if (!(o->draft_min >= 0 && o->draft_min <= 1)) {
      throw std::runtime_error(fmt::format("--draft-min {}: give a probability in [0, 1] (0: off)", o->draft_min));
    }
    if (!o->draft.empty() && !o->prefill_model.empty()) {
      throw std::runtime_error("--draft and --prefill-model: give one of them (the draft already evaluates the prompt "
                               "at its own precision)");
    }
    if (o->draft_baseline && o->draft.empty()) throw std::runtime_error("--draft-baseline needs --draft FILE");
    if (o->prefill_kld && o->prefill_model.empty()) throw std::runtime_error("--prefill-kld needs --prefill-model FILE");
    const GgufFile f = GgufFile::open(o->model);
    const std::unique_ptr<Model> model = load_model(f);
    const Tokenizer tok = Tokenizer::from_gguf(f);
    std::unique_ptr<Loaded> draft, prefill;
    if (!o->draft.empty()) {
      draft = load_companion(o->draft);
      check_companion_model("--draft", *model, tok, *draft->model, *draft->tok, false);
    }
    if (!o->prefill_model.empty()) {
      prefill = load_companion(o->prefill_model);
      check_companion_model("--prefill-model", *model, tok, *prefill->model, *prefill->tok, true);
    }
    const std::vector<int32_t> prompt = tok.encode(o->prompt, true);
    // In 64 bits: prompt + n overflows int for -n near INT_MAX.
    const int64_t wanted = static_cast<int64_t>(prompt.size()) + o->n;
    const int n_ctx = o->ctx > 0               ? o->ctx
                      : model->max_context() > 0 ? static_cast<int>(std::min<int64_t>(model->max_context(), wanted))
                                               : static_cast<int>(std::min<int64_t>(wanted, INT_MAX));
    if (static_cast<int>(prompt.size()) >= n_ctx) {
      throw std::runtime_error(fmt::format("the prompt has {} tokens, the context only {}", prompt.size(), n_ctx));
    }
    if (draft && draft->model->max_context() > 0 && draft->model->max_context() < n_ctx) {
      throw std::runtime_error(fmt::format("--draft {}: its context is {} tokens, the run needs {}: give -c {}",
                                           o->draft, draft->model->max_context(), n_ctx, draft->model->max_context()));
    }
    const AttentionMode attention = parse_attention_mode(o->attention);
    const std::unique_ptr<Context> ctx = model->new_context(n_ctx, o->threads);
    ctx->set_attention(attention);
    Sampler sampler({o->temp, o->top_k, o->top_p, o->seed});
    // The prompt as typed (the tokenizer's leading space is not echoed).
    fmt::print("{}", o->prompt);
    std::fflush(stdout);
    auto emit = [&](int32_t t) {
      fmt::print("{}", tok.decode_token(t));
      std::fflush(stdout);  // stream tokens as they come
    };

    if (draft) {
      const std::unique_ptr<Context> dctx = draft->model->new_context(n_ctx, o->threads);
      dctx->set_attention(attention);
      Sampler draft_sampler({o->temp, o->top_k, o->top_p, o->seed + 1});
      SpeculativeDecoder dec(*ctx, *dctx, sampler, draft_sampler, {o->draft_max, o->draft_min, false});
      const auto t0 = Clock::now();
      dec.start(prompt);
      const auto t1 = Clock::now();
      int generated = 0;
      bool done = false;
      while (!done && generated < o->n) {
        const std::vector<int32_t> out = dec.step(o->n - generated);
        if (out.empty()) break;
        for (int32_t t : out) {
          if (t == tok.eos()) {
            done = true;
            break;
          }
          emit(t);
          ++generated;
        }
      }
      const auto t2 = Clock::now();
      fmt::print("\n");
      std::fflush(stdout);
      const SpeculativeStats& s = dec.stats();
      // The prompt minus its last token runs on both models; the last is the first round's.
      fmt::print(stderr, "prompt: {} tokens, {:.1f} tokens/s (target and draft); generation: {} tokens, {:.1f} tokens/s\n",
                 prompt.size(), (prompt.size() - 1) / std::max(seconds(t0, t1), 1e-9), generated,
                 generated / std::max(seconds(t1, t2), 1e-9));
      fmt::print(stderr,
                 "speculative: {} rounds, {} drafted, {} accepted (acceptance {:.1f}%), mean accepted length {:.2f}, "
                 "{:.2f} tokens per target pass; draft {:.2f} s, target {:.2f} s ({:.1f} ms per pass)\n",
                 s.rounds, s.drafted, s.accepted, 100.0 * s.acceptance_rate(), s.mean_accepted(),
                 s.rounds > 0 ? static_cast<double>(generated) / static_cast<double>(s.rounds) : 0.0, s.draft_seconds,
                 s.target_seconds, s.rounds > 0 ? 1e3 * s.target_seconds / static_cast<double>(s.rounds) : 0.0);
      if (o->draft_baseline && generated > 0) {
        // MODEL alone in a fresh context, one token per pass, as many tokens.
        const std::unique_ptr<Context> alone = model->new_context(n_ctx, o->threads);
        alone->set_attention(attention);
        Sampler base_sampler({o->temp, o->top_k, o->top_p, o->seed});
        const std::vector<float>* l = &alone->eval(prompt, false);
        const auto b0 = Clock::now();
        for (int i = 0; i < generated && alone->n_past() < n_ctx; ++i) {
          l = &alone->eval({base_sampler.sample(l->data(), alone->n_vocab())}, false);
        }
        const double base_tps = generated / std::max(seconds(b0, Clock::now()), 1e-9);
        const double spec_tps = generated / std::max(seconds(t1, t2), 1e-9);
        fmt::print(stderr, "target alone: {} tokens, {:.1f} tokens/s; speedup {:.2f}x\n", generated, base_tps,
                   spec_tps / base_tps);
      }
      return;
    }

    const auto t0 = Clock::now();
    const std::vector<float>* logits = nullptr;
    if (prefill && prompt.size() > 1) {
      // All of the prompt but its last token on the prefill file; MODEL continues on that state
      // and evaluates the last prompt token itself, so every generated token is MODEL's. Both
      // take the numerics of the whole prompt's batch, so that with MODEL itself as the prefill
      // file everything is bit-identical to a run without one.
      const int whole = static_cast<int>(prompt.size());
      const std::unique_ptr<Context> pctx = prefill->model->new_context(n_ctx, o->threads);
      pctx->set_attention(attention);
      pctx->set_numerics_batch(whole);
      pctx->eval(std::vector<int32_t>(prompt.begin(), prompt.end() - 1), false);
      ctx->import_state(pctx->export_state());
      const NumericsBatchScope as_whole(*ctx, whole);
      logits = &ctx->eval({prompt.back()}, false);
    } else {
      logits = &ctx->eval(prompt, false);
    }
    const auto t1 = Clock::now();
    std::vector<int32_t> out;
    std::vector<float> rows;  // --prefill-kld: the logits each generated token was drawn from
    const auto nv = static_cast<size_t>(ctx->n_vocab());
    int generated = 0;
    for (; generated < o->n && ctx->n_past() < n_ctx; ++generated) {
      if (o->prefill_kld) rows.insert(rows.end(), logits->begin(), logits->begin() + static_cast<long>(nv));
      const int32_t next = sampler.sample(logits->data(), ctx->n_vocab());
      out.push_back(next);
      if (next == tok.eos()) break;
      emit(next);
      if (ctx->n_past() + 1 > n_ctx) break;
      logits = &ctx->eval({next}, false);
    }
    const auto t2 = Clock::now();
    const double prompt_s = seconds(t0, t1);
    fmt::print("\n");
    std::fflush(stdout);
    fmt::print(stderr, "prompt: {} tokens, {:.1f} tokens/s{}; generation: {} tokens, {:.1f} tokens/s\n", prompt.size(),
               prompt.size() / std::max(prompt_s, 1e-9), prefill ? " (all but the last by --prefill-model)" : "",
               generated, generated / std::max(seconds(t1, t2), 1e-9));
    if (o->prefill_kld && !rows.empty()) {
      // The same tokens with MODEL throughout (teacher-forced on the generated tokens).
      const std::unique_ptr<Context> ref = model->new_context(n_ctx, o->threads);
      ref->set_attention(attention);
      const auto r0 = Clock::now();
      const std::vector<float> first = ref->eval(prompt, false);
      const auto r1 = Clock::now();
      std::vector<float> ref_rows = first;
      if (out.size() > 1) {
        ref->set_numerics_batch(1);  // as generation evaluated them: one by one
        const std::vector<float>& rest = ref->eval(std::vector<int32_t>(out.begin(), out.end() - 1), true);
        ref_rows.insert(ref_rows.end(), rest.begin(), rest.end());
      }
      const size_t count = rows.size() / nv;
      std::vector<float> lb(nv), lq(nv);
      double sum = 0, max = 0;
      for (size_t i = 0; i < count; ++i) {
        LogSoftmax(&ref_rows[i * nv], static_cast<int>(nv)).all(lb.data());
        LogSoftmax(&rows[i * nv], static_cast<int>(nv)).all(lq.data());
        const double k = kl_row(lb.data(), lq.data(), static_cast<int>(nv)).kld;
        sum += k;
        max = std::max(max, k);
      }
      const double main_prompt_tps = prompt.size() / std::max(seconds(r0, r1), 1e-9);
      fmt::print(stderr,
                 "prefill-kld: {} generated tokens, KLD(MODEL throughout || prefill by --prefill-model) mean {:.6g}, "
                 "max {:.6g}; prompt on MODEL {:.1f} tokens/s, with --prefill-model {:.1f} tokens/s ({:.2f}x)\n",
                 count, sum / static_cast<double>(count), max, main_prompt_tps, prompt.size() / std::max(prompt_s, 1e-9),
                 (prompt.size() / std::max(prompt_s, 1e-9)) / main_prompt_tps);
    }
  });
}

}  // namespace mixq::cli
