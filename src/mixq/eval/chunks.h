// The chunk plan llama-perplexity uses, shared by every evaluation of a model over a text
// (perplexity.h, kld.h, imatrix, measure): the text is tokenized once (with BOS when the vocabulary
// adds one), cut into chunks of n_ctx tokens, and each chunk is scored on its second half
// (positions n_ctx/2 .. n_ctx-2 predicting the next token), so every scored token has at least
// n_ctx/2 tokens of context. When the vocabulary adds BOS (SentencePiece LLaMA vocabularies), the
// first token of every chunk is replaced by BOS so each chunk starts like a document; when it does
// not (GPT-2 byte-level vocabularies such as SmolLM2's), the chunk is used as it is.
//
// split_text() plans the chunks, run_chunks() runs a model over them and hands each chunk's scored
// rows to a callback. What is computed from a row of logits is in scores.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixq/engine/model.h"
#include "mixq/engine/tokenizer.h"

namespace mixq {

// The text cut into chunks, as llama-perplexity cuts it.
struct TextChunks {
  std::vector<int32_t> tokens;  // the whole text (BOS first when the vocabulary adds one)
  int n_ctx = 0;
  int n_chunks = 0;        // chunks that will be scored (at most tokens.size() / n_ctx)
  bool bos_first = false;  // chunk[0] is replaced by BOS (the vocabulary adds BOS)
  int32_t bos = -1;

  int first() const { return n_ctx / 2; }                   // first scored position
  int rows_per_chunk() const { return n_ctx - 1 - first(); }  // scored positions per chunk
  int64_t scored_tokens() const { return static_cast<int64_t>(n_chunks) * rows_per_chunk(); }
  // The n_ctx tokens of chunk c as the text has them (before the BOS replacement).
  const int32_t* text_tokens(int c) const { return tokens.data() + static_cast<size_t>(c) * static_cast<size_t>(n_ctx); }
  // The tokens fed to the model for chunk c (BOS first when bos_first).
  std::vector<int32_t> input(int c) const;
  // The rows_per_chunk() tokens that the scored rows of chunk c predict.
  const int32_t* targets(int c) const { return text_tokens(c) + first() + 1; }
  // Throws std::runtime_error when a token the chunks use is outside a vocabulary of n_vocab
  // tokens (the tokenizer does not match the model).
  void check_vocabulary(int n_vocab) const;
};

// Tokenizes the text (BOS first when tok.add_bos_token()) and plans the chunks; max_chunks 0: all.
// Throws std::runtime_error when n_ctx is below 4 or the text is shorter than two contexts.
TextChunks split_text(const Tokenizer& tok, const std::string& text, int n_ctx, int max_chunks);

// One chunk's scored rows: logits at positions first() .. n_ctx-2 (rows x n_vocab, row-major) and
// the tokens they predict. The pointers are valid during the callback only.
struct ChunkLogits {
  int chunk = 0;
  int rows = 0;
  int n_vocab = 0;
  const float* logits = nullptr;
  const int32_t* targets = nullptr;
  ThreadPool* threads = nullptr;  // the model's threads, idle during the callback
  const float* row(int i) const { return logits + static_cast<size_t>(i) * static_cast<size_t>(n_vocab); }
};

// One model's context for a chunk plan: run(c) evaluates chunk c as a fresh sequence.
class ChunkRunner {
 public:
  // Throws std::runtime_error when a token of the chunks is outside the model's vocabulary.
  ChunkRunner(const Model& model, const TextChunks& chunks, int threads,
              AttentionMode attention = AttentionMode::kLlamaCppF16);
  // Chunk c's scored rows; valid until the next run().
  ChunkLogits run(int c);

 private:
  const TextChunks& chunks_;
  std::unique_ptr<Context> ctx_;
};

// Runs the model over chunks 0 .. n_chunks-1 (one fresh sequence each) and calls fn after each.
void run_chunks(const Model& model, const TextChunks& chunks, int threads,
                const std::function<void(const ChunkLogits&)>& fn,
                AttentionMode attention = AttentionMode::kLlamaCppF16);

}  // namespace mixq
