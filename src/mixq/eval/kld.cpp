#include "mixq/eval/kld.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include "mixq/eval/scores.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

namespace fs = std::filesystem;

namespace {

struct RowResult {
  double kld, nll_base, nll_model, delta_p;
  bool same_top;
};

// The statistics of chunks: float32 log-probabilities of a chunk's rows (both sides), compared in
// double with the rows spread over a pool of threads.
class Comparer {
 public:
  explicit Comparer(int threads) : pool_(threads) {}

  // out (rows x n_vocab) = the float32 log-softmax of the chunk's logits; `who` names the model in errors.
  void log_probs(const ChunkLogits& c, std::vector<float>& out, const char* who) {
    out.resize(static_cast<size_t>(c.rows) * static_cast<size_t>(c.n_vocab));
    pool_.parallel_for(c.rows, [&](int64_t i) {
      LogSoftmax(c.row(static_cast<int>(i)), c.n_vocab).all(out.data() + static_cast<size_t>(i) * c.n_vocab);
    });
    check_finite(c, out, who);
  }

  // Appends the chunk's per-token values: base_lp from log_probs() (or a stored run), the model's chunk.
  void compare(const std::vector<float>& base_lp, const ChunkLogits& m, KldTokens& out) {
    log_probs(m, model_lp_, "the model");
    std::vector<RowResult> rows(static_cast<size_t>(m.rows));
    const int n = m.n_vocab;
    pool_.parallel_for(m.rows, [&](int64_t i) {
      const float* b = base_lp.data() + static_cast<size_t>(i) * n;
      const float* q = model_lp_.data() + static_cast<size_t>(i) * n;
      const RowKl k = kl_row(b, q, n);
      const double sb = k.sum_base, lsb = k.log_norm_base, lsq = k.log_norm_model;
      const int32_t t = m.targets[i];
      RowResult& r = rows[static_cast<size_t>(i)];
      r.kld = k.kld;
      r.nll_base = -(static_cast<double>(b[t]) - lsb);
      r.nll_model = -(static_cast<double>(q[t]) - lsq);
      r.delta_p = std::exp(-r.nll_model) - std::exp(-r.nll_base);
      r.same_top = first_max(b, n) == first_max(q, n);
      if (!std::isfinite(sb) || std::abs(sb - 1) > 1e-3) bad_base_row_ = static_cast<int>(i);
    });
    if (bad_base_row_ >= 0) {
      const int row = bad_base_row_;
      bad_base_row_ = -1;
      throw std::runtime_error(fmt::format("the base log-probabilities of chunk {}, row {} are not a distribution "
                                           "(corrupt base logits?)",
                                           m.chunk, row));
    }
    for (const RowResult& r : rows) {
      out.kld.push_back(r.kld);
      out.nll_base.push_back(r.nll_base);
      out.nll_model.push_back(r.nll_model);
      out.delta_p.push_back(r.delta_p);
      out.same_top.push_back(r.same_top ? 1 : 0);
    }
  }

 private:
  static void check_finite(const ChunkLogits& c, const std::vector<float>& lp, const char* who) {
    for (size_t i = 0; i < lp.size(); ++i) {
      if (!std::isfinite(lp[i])) {
        throw std::runtime_error(fmt::format("{} produced logits that are not finite (chunk {}, scored row {})", who,
                                             c.chunk, i / static_cast<size_t>(c.n_vocab)));
      }
    }
  }

  ThreadPool pool_;
  std::vector<float> model_lp_;
  std::atomic<int> bad_base_row_{-1};
};

// Running figures for the progress callback.
struct Running {
  double kld = 0, nll_base = 0, nll_model = 0;
  size_t seen = 0;
  void add(const KldTokens& t) {
    for (; seen < t.size(); ++seen) {
      kld += t.kld[seen];
      nll_base += t.nll_base[seen];
      nll_model += t.nll_model[seen];
    }
  }
  KldProgress progress(int done, int total) const {
    const double n = static_cast<double>(std::max<size_t>(seen, 1));
    return {done, total, kld / n, std::exp(nll_base / n), std::exp(nll_model / n)};
  }
};

void check_cancel(const KldOptions& opts) {
  if (opts.cancel && opts.cancel->load()) throw KldCancelled();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_same_tokens(const std::vector<int32_t>& a, const std::vector<int32_t>& b, size_t n, const char* what_a,
                       const char* what_b, const std::string& advice) {
  for (size_t i = 0; i < n; ++i) {
    if (i >= a.size() || i >= b.size() || a[i] != b[i]) {
      throw std::runtime_error(fmt::format("{} and {} differ at token {} ({} vs {}): {}", what_a, what_b, i,
                                           i < a.size() ? std::to_string(a[i]) : "end of text",
                                           i < b.size() ? std::to_string(b[i]) : "end of text", advice));
    }
  }
}
}  // namespace

void check_same_vocabulary(const Tokenizer& base, int base_n_vocab, const Tokenizer& model, int model_n_vocab) {
  const auto differ = [](const std::string& what) {
    return std::runtime_error("the base and the model have different vocabularies (" + what +
                              "): KL divergence compares distributions over the same tokens");
  };
  if (base_n_vocab != model_n_vocab) {
    throw differ(fmt::format("the base outputs {} logits per token, the model {}", base_n_vocab, model_n_vocab));
  }
  if (base.size() != model.size()) {
    throw differ(fmt::format("the base has {} tokens, the model {}", base.size(), model.size()));
  }
  if (base.model() != model.model()) throw differ(fmt::format("tokenizer '{}' vs '{}'", base.model(), model.model()));
  if (base.bos() != model.bos() || base.add_bos_token() != model.add_bos_token()) throw differ("BOS handling differs");
  for (size_t id = 0; id < base.size(); ++id) {
    const auto i = static_cast<int32_t>(id);
    if (base.decode_token(i) != model.decode_token(i)) {
      throw differ(fmt::format("token {} is '{}' in the base, '{}' in the model", id, base.decode_token(i),
                               model.decode_token(i)));
    }
  }
}

KldResult kl_divergence(const Model& base, const Tokenizer& base_tok, const Model& model,
                        const Tokenizer& tok, const std::string& text, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  check_same_vocabulary(base_tok, base.n_vocab(), tok, model.n_vocab());
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  const size_t n_used = static_cast<size_t>(chunks.n_chunks) * static_cast<size_t>(chunks.n_ctx);
  check_same_tokens(base_tok.encode(text, true), chunks.tokens, n_used, "the base's tokens", "the model's tokens",
                    "the tokenizers differ, so the models' vocabularies are not the same");
  std::optional<BaseLogitsWriter> writer;
  if (!opts.save_base.empty()) writer.emplace(opts.save_base, chunks, base.n_vocab());
  ChunkRunner base_runner(base, chunks, opts.threads, opts.attention);
  Comparer cmp(opts.threads);
  KldResult r;
  Running running;
  std::vector<float> base_lp;
  run_chunks(model, chunks, opts.threads, [&](const ChunkLogits& m) {
    cmp.log_probs(base_runner.run(m.chunk), base_lp, "the base");
    if (writer) writer->write_chunk(base_lp);
    cmp.compare(base_lp, m, r.tokens);
    running.add(r.tokens);
    if (opts.on_chunk) opts.on_chunk(running.progress(m.chunk + 1, chunks.n_chunks));
    check_cancel(opts);
  }, opts.attention);
  if (writer) writer->finish();
  r.stats = summarize(r.tokens, chunks.n_chunks, chunks.n_ctx);
  r.seconds = seconds_since(start);
  return r;
}

KldResult kl_divergence_from_file(const fs::path& base_logits, const Model& model, const Tokenizer& tok,
                                  const std::string& text, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  BaseLogitsReader reader(base_logits);
  const BaseLogitsInfo& info = reader.info();
  const std::string where = fmt::format("the base logits '{}'", base_logits.string());
  if (info.n_vocab != model.n_vocab()) {
    throw std::runtime_error(fmt::format("{} are over a vocabulary of {} tokens, the model has {}: the vocabularies "
                                         "differ",
                                         where, info.n_vocab, model.n_vocab()));
  }
  if (info.bos_first != tok.add_bos_token() || (info.bos_first && info.bos != tok.bos())) {
    throw std::runtime_error(fmt::format("{} were made with another BOS handling than the model's vocabulary: the "
                                         "vocabularies differ",
                                         where));
  }
  int n_chunks = info.n_chunks;
  if (opts.max_chunks > 0) {
    if (opts.max_chunks > info.n_chunks) {
      throw std::runtime_error(
          fmt::format("{} hold {} chunks; --chunks {} asks for more", where, info.n_chunks, opts.max_chunks));
    }
    n_chunks = opts.max_chunks;
  }
  const TextChunks chunks = split_text(tok, text, info.n_ctx, n_chunks);
  if (chunks.n_chunks < n_chunks) {
    throw std::runtime_error(fmt::format("the text has {} chunks of {} tokens, {} hold {}: use the same text", chunks.n_chunks,
                                         info.n_ctx, where, n_chunks));
  }
  const size_t n_used = static_cast<size_t>(n_chunks) * static_cast<size_t>(info.n_ctx);
  check_same_tokens(info.tokens, chunks.tokens, n_used, "the stored tokens", "the text's tokens",
                    "use the same text (-f) and a model with the same vocabulary as the base");
  Comparer cmp(opts.threads);
  KldResult r;
  Running running;
  std::vector<float> base_lp;
  run_chunks(model, chunks, opts.threads, [&](const ChunkLogits& m) {
    reader.read_chunk(m.chunk, base_lp);
    cmp.compare(base_lp, m, r.tokens);
    running.add(r.tokens);
    if (opts.on_chunk) opts.on_chunk(running.progress(m.chunk + 1, chunks.n_chunks));
    check_cancel(opts);
  }, opts.attention);
  r.stats = summarize(r.tokens, chunks.n_chunks, chunks.n_ctx);
  r.seconds = seconds_since(start);
  return r;
}

PerplexityResult save_base_logits(const Model& base, const Tokenizer& tok, const std::string& text,
                                  const fs::path& out, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  BaseLogitsWriter writer(out, chunks, base.n_vocab());
  Comparer cmp(opts.threads);
  std::vector<float> base_lp;
  // The NLLs as a comparison computes them (renormalized float32 log-probabilities), so this PPL is
  // exactly the PPL(base) that a later comparison against the file reports.
  std::vector<double> nll;
  double nll_sum = 0;
  run_chunks(base, chunks, opts.threads, [&](const ChunkLogits& b) {
    cmp.log_probs(b, base_lp, "the base");
    writer.write_chunk(base_lp);
    for (int i = 0; i < b.rows; ++i) {
      const float* row = base_lp.data() + static_cast<size_t>(i) * b.n_vocab;
      nll.push_back(-(static_cast<double>(row[b.targets[i]]) - log_norm(row, b.n_vocab)));
      nll_sum += nll.back();
    }
    if (opts.on_chunk) opts.on_chunk({b.chunk + 1, chunks.n_chunks, 0, std::exp(nll_sum / static_cast<double>(nll.size())), 0});
    check_cancel(opts);
  }, opts.attention);
  writer.finish();
  double mean = 0, var = 0;
  for (double v : nll) mean += v;
  mean /= static_cast<double>(nll.size());
  for (double v : nll) var += (v - mean) * (v - mean);
  var /= static_cast<double>(nll.size());
  const PplEstimate e = ppl_from_nll(mean, var, static_cast<int64_t>(nll.size()));
  PerplexityResult r;
  r.chunks = chunks.n_chunks;
  r.scored_tokens = static_cast<int64_t>(nll.size());
  r.ppl = e.ppl;
  r.ppl_error = e.error;
  r.seconds = seconds_since(start);
  return r;
}

}  // namespace mixq
