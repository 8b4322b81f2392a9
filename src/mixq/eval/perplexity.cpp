#include "mixq/eval/perplexity.h"

#include <chrono>
#include <cmath>
#include <vector>

namespace mixq {

PerplexityResult perplexity(const Model& model, const Tokenizer& tok, const std::string& text,
                            const PerplexityOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  std::vector<double> lps;
  run_chunks(model, chunks, opts.threads, [&](const ChunkLogits& c) {
    // The rows' log-probabilities on the model's threads, summed here in row order.
    lps.resize(static_cast<size_t>(c.rows));
    c.threads->parallel_for(c.rows, [&](int64_t i) {
      lps[static_cast<size_t>(i)] = LogSoftmax(c.row(static_cast<int>(i)), c.n_vocab)(c.targets[i]);
    });
    for (int i = 0; i < c.rows; ++i) {
      const double lp = lps[static_cast<size_t>(i)];
      nll -= lp;
      nll2 += lp * lp;
      ++count;
    }
    if (opts.on_chunk) opts.on_chunk(c.chunk + 1, chunks.n_chunks, std::exp(nll / static_cast<double>(count)));
  }, opts.attention);
  PerplexityResult r;
  r.chunks = chunks.n_chunks;
  r.scored_tokens = count;
  const double mean = nll / static_cast<double>(count);
  const PplEstimate e = ppl_from_nll(mean, nll2 / static_cast<double>(count) - mean * mean, count);
  r.ppl = e.ppl;
  r.ppl_error = e.error;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace mixq
