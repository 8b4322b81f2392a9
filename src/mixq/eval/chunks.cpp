#include "mixq/eval/chunks.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

std::vector<int32_t> TextChunks::input(int c) const {
  std::vector<int32_t> chunk(text_tokens(c), text_tokens(c) + n_ctx);
  if (bos_first) chunk[0] = bos;  // as llama-perplexity: every chunk starts like a document
  return chunk;
}

void TextChunks::check_vocabulary(int n_vocab) const {
  const size_t used = static_cast<size_t>(n_chunks) * static_cast<size_t>(n_ctx);
  for (size_t i = 0; i < used && i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= n_vocab) {
      throw std::runtime_error(fmt::format("token {} (id {}) is outside the model's vocabulary of {} tokens: the "
                                           "tokenizer does not match the model",
                                           i, tokens[i], n_vocab));
    }
  }
}

TextChunks split_text(const Tokenizer& tok, const std::string& text, int n_ctx, int max_chunks) {
  if (n_ctx < 4) throw std::runtime_error(fmt::format("the context size (-c) must be at least 4, got {}", n_ctx));
  TextChunks t;
  t.n_ctx = n_ctx;
  t.bos_first = tok.add_bos_token();
  t.bos = tok.bos();
  if (t.bos_first && t.bos < 0) throw std::runtime_error("the vocabulary adds BOS but defines no BOS token");
  t.tokens = tok.encode(text, true);  // BOS first only when the vocabulary adds it
  if (static_cast<int64_t>(t.tokens.size()) < 2LL * n_ctx) {
    throw std::runtime_error(fmt::format("the text has {} tokens; -c {} needs at least {} (two contexts): use a "
                                         "longer text or a smaller -c",
                                         t.tokens.size(), n_ctx, 2LL * n_ctx));
  }
  t.n_chunks = static_cast<int>(t.tokens.size() / static_cast<size_t>(n_ctx));
  if (max_chunks > 0) t.n_chunks = std::min(t.n_chunks, max_chunks);
  return t;
}

ChunkRunner::ChunkRunner(const Model& model, const TextChunks& chunks, int threads, AttentionMode attention)
    : chunks_(chunks), ctx_(model.new_context(chunks.n_ctx, threads)) {
  ctx_->set_attention(attention);
  chunks.check_vocabulary(ctx_->n_vocab());
}

ChunkLogits ChunkRunner::run(int c) {
  ctx_->reset();
  // Only the scored rows' logits (the head's product over the other rows is skipped).
  const std::vector<float>& logits = ctx_->eval_tail(chunks_.input(c), chunks_.first());
  ChunkLogits out;
  out.chunk = c;
  out.rows = chunks_.rows_per_chunk();
  out.n_vocab = ctx_->n_vocab();
  out.logits = logits.data();
  out.targets = chunks_.targets(c);
  out.threads = &ctx_->thread_pool();
  return out;
}

void run_chunks(const Model& model, const TextChunks& chunks, int threads,
                const std::function<void(const ChunkLogits&)>& fn, AttentionMode attention) {
  ChunkRunner runner(model, chunks, threads, attention);
  for (int c = 0; c < chunks.n_chunks; ++c) fn(runner.run(c));
}

}  // namespace mixq
