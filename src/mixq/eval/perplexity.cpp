#include "mixq/eval/perplexity.h"

#include <chrono>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

PerplexityResult perplexity(const LlamaModel& model, const Tokenizer& tok, const std::string& text,
                            const PerplexityOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens = tok.encode(text, true);
  const int n_ctx = opts.n_ctx;
  if (static_cast<int64_t>(tokens.size()) < 2LL * n_ctx) {
    throw std::runtime_error(fmt::format("the text has {} tokens; perplexity with -c {} needs at least {} (two "
                                         "contexts): use a longer text or a smaller -c",
                                         tokens.size(), n_ctx, 2 * n_ctx));
  }
  int n_chunks = static_cast<int>(tokens.size() / static_cast<size_t>(n_ctx));
  if (opts.max_chunks > 0) n_chunks = std::min(n_chunks, opts.max_chunks);
  LlamaContext ctx(model, n_ctx, opts.threads);
  const int n_vocab = ctx.n_vocab();
  const int first = n_ctx / 2;
  double nll = 0, nll2 = 0;
  int64_t count = 0;
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<long>(c) * n_ctx,
                               tokens.begin() + static_cast<long>(c + 1) * n_ctx);
    chunk[0] = tok.bos();  // as llama-perplexity: every chunk starts like a document
    ctx.reset();
    const std::vector<float>& logits = ctx.eval(chunk, true);
    for (int j = first; j < n_ctx - 1; ++j) {
      const float* row = logits.data() + static_cast<size_t>(j) * static_cast<size_t>(n_vocab);
      float max_l = row[0];
      for (int v = 1; v < n_vocab; ++v) max_l = std::max(max_l, row[v]);
      double sum = 0;
      for (int v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(row[v] - max_l));
      const int32_t target = tokens[static_cast<size_t>(c) * n_ctx + static_cast<size_t>(j) + 1];
      const double lp = static_cast<double>(row[target] - max_l) - std::log(sum);
      nll -= lp;
      nll2 += lp * lp;
      ++count;
    }
    if (opts.on_chunk) opts.on_chunk(c + 1, n_chunks, std::exp(nll / static_cast<double>(count)));
  }
  PerplexityResult r;
  r.chunks = n_chunks;
  r.scored_tokens = count;
  const double mean = nll / static_cast<double>(count);
  r.ppl = std::exp(mean);
  const double var = nll2 / static_cast<double>(count) - mean * mean;
  r.ppl_error = var > 0 ? std::sqrt(var / static_cast<double>(count - 1)) * r.ppl : 0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace mixq
