// `mixq kld`: KL divergence of a model from a base model (or a stored base run), with
// llama-perplexity's chunks, report and an optional quality gate.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "mixq/engine/registry.h"
#include "mixq/eval/kld.h"
#include "mixq/io/tensor_check.h"
#include "mixq/io/whisper_file.h"
#include "progress.h"
#include "whisper_commands.h"

namespace mixq::cli {

namespace {

constexpr int kExitGateFailed = 3;

struct Opts {
  std::vector<std::string> models;  // one (GGUF); whisper.cpp files: one or more against one --base
  std::string model, base, base_logits, save_base, file, max_ppl_increase;
  int n_ctx = 512, chunks = 0, threads = 0;
  std::string attention = "f16", activations = "f32";
  bool json = false, clean_stale = false;
  std::optional<double> max_kld;
};

void run(const Opts& o, bool ctx_given) {
  check_outputs({{"MODEL", o.model}, {"--base", o.base}, {"--base-logits", o.base_logits}, {"-f", o.file}},
                {{"--save-base", o.save_base}}, o.clean_stale);
  checked_threads(o.threads);
  const bool compare = !o.base.empty() || !o.base_logits.empty();
  if (!o.base.empty() && !o.base_logits.empty()) throw std::runtime_error("give either --base or --base-logits, not both");
  if (!o.base_logits.empty() && !o.save_base.empty()) {
    throw std::runtime_error("--save-base stores a base run; with --base-logits the base is already stored");
  }
  if (!compare && o.save_base.empty()) {
    throw std::runtime_error("nothing to compare with: give --base REF.gguf, --base-logits FILE, or --save-base FILE "
                             "to store MODEL's run as a base");
  }
  std::optional<double> max_ppl_increase;
  if (!o.max_ppl_increase.empty()) max_ppl_increase = parse_ppl_increase(o.max_ppl_increase);
  if (o.max_kld && !(std::isfinite(*o.max_kld) && *o.max_kld >= 0)) {
    throw std::runtime_error(fmt::format("bad --max-kld {}: the limit must be a finite number >= 0", *o.max_kld));
  }
  if (!compare && (max_ppl_increase || o.max_kld)) {
    throw std::runtime_error("--max-ppl-increase and --max-kld need a comparison (--base or --base-logits)");
  }
  const ActivationPrecision act = parse_activation_precision(o.activations);
  if (act != ActivationPrecision::kF32 && !o.base.empty()) {
    throw std::runtime_error(fmt::format("--activations {} with --base: the base would be rounded too; store an f32 "
                                         "base first (mixq kld REF.gguf --save-base F -f TEXT) and give --base-logits F",
                                         o.activations));
  }
  set_default_activation_precision(act);
  if (o.chunks < 0) throw std::runtime_error(fmt::format("--chunks must be >= 0, got {}", o.chunks));

  const std::string text = read_text_file(o.file);
  KldOptions opts;
  opts.n_ctx = o.n_ctx;
  opts.max_chunks = o.chunks;
  opts.threads = o.threads;
  opts.attention = parse_attention_mode(o.attention);
  if (!o.base_logits.empty()) {
    const BaseLogitsInfo info = read_base_logits_info(o.base_logits);
    if (ctx_given && info.n_ctx != o.n_ctx) {
      throw std::runtime_error(fmt::format("the base logits '{}' were made with -c {}, not -c {}", o.base_logits,
                                           info.n_ctx, o.n_ctx));
    }
    opts.n_ctx = info.n_ctx;
  }
  const GgufFile mf = GgufFile::open(o.model);
  // Batches only: no decode layouts, whose prefill unpacks rows (load_model).
  const std::unique_ptr<Model> model = load_model(mf, false);
  const Tokenizer tok = Tokenizer::from_gguf(mf);
  std::optional<GgufFile> bf;
  std::unique_ptr<Model> base;
  std::optional<Tokenizer> base_tok;
  if (!o.base.empty()) {
    bf.emplace(GgufFile::open(o.base));
    base = load_model(*bf, false);
    base_tok.emplace(Tokenizer::from_gguf(*bf));
  }

  Progress bar(compare ? "kld" : "base");
  const auto start = std::chrono::steady_clock::now();
  opts.on_chunk = [&](const KldProgress& p) {
    const std::string what = compare ? fmt::format("KLD {:.6f}, PPL {:.4f} vs {:.4f}", p.mean_kld, p.ppl_model, p.ppl_base)
                                     : fmt::format("PPL {:.4f}", p.ppl_base);
    bar.update(static_cast<size_t>(p.done), static_cast<size_t>(p.total), what,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  // An interruption is handled by main()'s handler, which removes the --save-base temporary file.
  if (!o.save_base.empty()) opts.save_base = o.save_base;

  std::optional<KldResult> result;
  std::optional<PerplexityResult> saved;
  try {
    if (base) {
      result = kl_divergence(*base, *base_tok, *model, tok, text, opts);
    } else if (!o.base_logits.empty()) {
      result = kl_divergence_from_file(o.base_logits, *model, tok, text, opts);
    } else {
      saved = save_base_logits(*model, tok, text, o.save_base, opts);
    }
  } catch (const std::runtime_error& e) {
    bar.finish();
    if (bf) {
      if (const auto bad = find_non_finite_tensor(*bf)) explain_failure(*bf, o.base, e);
    }
    explain_failure(mf, o.model, e);
  } catch (...) {
    bar.finish();
    throw;
  }
  bar.finish();

  if (saved && !std::isfinite(saved->ppl)) throw_non_finite(mf, o.model);
  if (result) {
    const KldStats& st = result->stats;
    if (bf && !std::isfinite(st.ppl_base.value)) throw_non_finite(*bf, o.base);
    if (!std::isfinite(st.ppl_model.value) || !std::isfinite(st.kld.value)) throw_non_finite(mf, o.model);
  }
  if (saved) {
    if (o.json) {
      nlohmann::ordered_json j;
      j["model"] = o.model;
      j["saved_base"] = o.save_base;
      j["chunks"] = saved->chunks;
      j["n_ctx"] = opts.n_ctx;
      j["tokens"] = saved->scored_tokens;
      j["ppl"] = {{"value", saved->ppl}, {"error", saved->ppl_error}};
      j["seconds"] = saved->seconds;
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("{} chunks of {} tokens, {} tokens scored, {:.1f} s\n", saved->chunks, opts.n_ctx,
                 saved->scored_tokens, saved->seconds);
      fmt::print("PPL(base) = {:.4f} +/- {:.5f}\n", saved->ppl, saved->ppl_error);
      fmt::print("saved the base log-probabilities to {}\n", o.save_base);
    }
    return;
  }

  const KldStats& s = result->stats;
  const std::vector<std::string> failures = check_quality_gate(s, max_ppl_increase, o.max_kld);
  const bool gated = max_ppl_increase || o.max_kld;
  if (o.json) {
    nlohmann::ordered_json j;
    j["model"] = o.model;
    j["base"] = o.base.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(o.base);
    j["base_logits"] = o.base_logits.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(o.base_logits);
    if (!o.save_base.empty()) j["saved_base"] = o.save_base;
    j.update(s.to_json());
    j["seconds"] = result->seconds;
    if (gated) {
      nlohmann::ordered_json g;
      g["max_ppl_increase"] = max_ppl_increase ? nlohmann::ordered_json(*max_ppl_increase) : nlohmann::ordered_json();
      g["max_kld"] = o.max_kld ? nlohmann::ordered_json(*o.max_kld) : nlohmann::ordered_json();
      g["passed"] = failures.empty();
      g["failures"] = failures;
      j["gate"] = g;
    }
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("model: {}\n", o.model);
    if (!o.base.empty()) fmt::print("base:  {}\n", o.base);
    if (!o.base_logits.empty()) fmt::print("base:  stored run {}\n", o.base_logits);
    fmt::print("{} chunks of {} tokens, {} tokens scored, {:.1f} s\n\n", s.chunks, s.n_ctx, s.tokens, result->seconds);
    fmt::print("{}", s.to_text());
    if (!o.save_base.empty()) fmt::print("\nsaved the base log-probabilities to {}\n", o.save_base);
    if (gated && failures.empty()) {
      std::string limits;
      if (max_ppl_increase) {
        limits += fmt::format("PPL increase {:.4f}% <= {:.4g}%", 100 * s.ppl_increase(), 100 * *max_ppl_increase);
      }
      if (o.max_kld) limits += fmt::format("{}mean KLD {:.6f} <= {:.6g}", limits.empty() ? "" : ", ", s.kld.value, *o.max_kld);
      fmt::print("\nquality gate passed: {}\n", limits);
    }
  }
  if (!failures.empty()) {
    std::fflush(stdout);
    for (const auto& f : failures) fmt::print(stderr, "mixq: quality gate failed: {}\n", f);
    throw CLI::RuntimeError(kExitGateFailed);
  }
}

}  // namespace

void register_kld(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "kld", "KL divergence of a model from a base model on a text (llama-perplexity's chunks and report)");
  auto o = std::make_shared<Opts>();
  cmd->add_option("MODEL", o->models,
                  "Model to judge (GGUF); with only --save-base, the base model to store. whisper.cpp files: "
                  "one or more models, judged against --base on the test set -f LIST.tsv")
      ->required();
  cmd->add_option("--base", o->base, "Base (reference) model, e.g. the F32/F16 original (GGUF)");
  cmd->add_option("--base-logits", o->base_logits, "A base run stored with --save-base (instead of --base)");
  cmd->add_option("--save-base", o->save_base,
                  "Store the base run's log-probabilities (float32, unclamped) here: with --base, the base "
                  "while comparing; alone, MODEL's run");
  cmd->add_option("-f,--file", o->file,
                  "Text file (e.g. wiki.test.raw); for whisper.cpp models a test-set list: AUDIO.wav<TAB>reference "
                  "text per line")
      ->required();
  auto* ctx = cmd->add_option("-c,--ctx-size", o->n_ctx, "Context per chunk (with --base-logits: the file's)")
                  ->capture_default_str();
  cmd->add_option("--chunks", o->chunks, "Score only the first N chunks (0: all)");
  add_threads_option(cmd, o->threads);
  add_clean_stale_flag(cmd, o->clean_stale);
  add_attention_option(cmd, o->attention);
  cmd->add_option("--activations", o->activations, "Activation precision, emulated: every matrix product's input rounded to f32 (none, the default), f16, bf16 or q8 (Q8_0 blocks of 32); MODEL only: compare with --base-logits");
  cmd->add_flag("--json", o->json, "Print one JSON object instead of the text report");
  cmd->add_option("--max-ppl-increase", o->max_ppl_increase,
                  "Quality gate: fail when PPL(model) exceeds PPL(base) by more than this (5% or 0.05)");
  cmd->add_option("--max-kld", o->max_kld, "Quality gate: fail when the mean KLD exceeds this");
  cmd->footer(
      "Reports PPL of both models, their ratio, mean/median/percentile KLD, same top token and the change in the\n"
      "probability of the right token (Δp), per scored token as llama-perplexity --kl-divergence does; the base\n"
      "is stored without clamping. Exit status: 0 done (gates passed), 1 error, 3 a quality gate failed\n"
      "(--max-ppl-increase / --max-kld; the report is printed first), 130 interrupted (SIGINT; 143 SIGTERM,\n"
      "129 SIGHUP), with no output left behind.");
  cmd->callback([o, ctx, cmd] {
    // Whisper: word error rates and teacher-forced KLD on a spoken test set (whisper_commands.cpp).
    if (is_whisper_file(o->models.front())) {
      run_whisper_kld(*cmd, {.models = o->models, .base = o->base, .list = o->file, .threads = o->threads,
                             .json = o->json, .max_kld = o->max_kld});
      return;
    }
    if (o->models.size() != 1) {
      throw std::runtime_error(fmt::format("give one MODEL (got {}); several models are judged together only for "
                                           "whisper.cpp files", o->models.size()));
    }
    o->model = o->models.front();
    run(*o, ctx->count() > 0);
  });
}

}  // namespace mixq::cli
