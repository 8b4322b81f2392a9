// The stored base run of a KL-divergence evaluation (kld.h): one model's float32 log-probabilities
// of every scored row of a chunk plan (chunks.h), so later comparisons need not run the base again.
//
// The file keeps the float32 log-probabilities of every scored row WITHOUT any clamping (llama.cpp
// stores 16 bits over [max - 16, max] and clamps lower values, so its KLD-mode PPL(base) is not the
// true one). Layout (little-endian):
//   header (40 bytes): magic "MIXQKLDB", u32 version (1), u32 n_vocab, u32 n_ctx, u32 n_chunks,
//     u32 first scored position (n_ctx / 2), u32 flags (bit 0: chunk[0] replaced by BOS), i32 BOS id,
//     u32 reserved (0)
//   i32 tokens[n_chunks * n_ctx]: the text's tokens of the scored chunks (before the BOS replacement)
//   u64 checksum of the header and the tokens
//   per chunk: f32 log_probs[(n_ctx - 1 - first) * n_vocab], u64 checksum of those bytes
// It is written through AtomicFile (io/atomic_file.h): a temporary file beside the destination,
// renamed when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "mixq/eval/chunks.h"

namespace mixq {

// The header of a stored base run (validated against the file size when read).
struct BaseLogitsInfo {
  int n_vocab = 0, n_ctx = 0, n_chunks = 0;
  bool bos_first = false;
  int32_t bos = -1;
  std::vector<int32_t> tokens;  // n_chunks * n_ctx
};
BaseLogitsInfo read_base_logits_info(const std::filesystem::path& path);

// Writes a stored base run chunk by chunk: nothing appears at `out` before finish().
class BaseLogitsWriter {
 public:
  BaseLogitsWriter(const std::filesystem::path& out, const TextChunks& chunks, int n_vocab);
  ~BaseLogitsWriter();
  BaseLogitsWriter(const BaseLogitsWriter&) = delete;
  BaseLogitsWriter& operator=(const BaseLogitsWriter&) = delete;
  // The chunk's rows_per_chunk() x n_vocab log-probabilities, chunks in order.
  void write_chunk(const std::vector<float>& log_probs);
  // Throws std::logic_error unless every chunk was written; then renames the file into place.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads a stored base run; the header, the tokens and the file size are checked on opening (throws
// std::runtime_error naming the file and the fault), each chunk's checksum when it is read.
class BaseLogitsReader {
 public:
  explicit BaseLogitsReader(const std::filesystem::path& path);
  ~BaseLogitsReader();
  BaseLogitsReader(const BaseLogitsReader&) = delete;
  BaseLogitsReader& operator=(const BaseLogitsReader&) = delete;
  const BaseLogitsInfo& info() const;
  void read_chunk(int c, std::vector<float>& out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mixq
