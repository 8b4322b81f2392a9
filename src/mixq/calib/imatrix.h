// Importance matrices: per-column mean squared activations of every matrix input, as
// llama-imatrix writes them (GGUF: "<tensor>.in_sum2" + "<tensor>.counts", general.type =
// "imatrix"; or the legacy binary .dat). Quantizers weight each column's error by them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mixq {

// What llama-imatrix stores for one tensor: per column the sum of squared inputs over every token
// ("<tensor>.in_sum2", not divided), and per matrix (expert) the number of tokens ("<tensor>.counts").
struct ImatrixSums {
  std::vector<float> in_sum2;
  std::vector<float> counts;  // in_sum2.size() / counts.size() columns per matrix
};

struct ImportanceMatrix {
  // tensor name ("blk.0.attn_q.weight") -> one weight per column (per expert for 3-D tensors,
  // concatenated). Values are means (sum of squares / count).
  std::map<std::string, std::vector<float>> weights;
  std::vector<std::string> datasets;
  int64_t chunk_count = 0;
  int64_t chunk_size = 0;
  std::string source;  // the file it came from
  // The raw sums and counts behind `weights` (same keys): filled for GGUF files and collected
  // matrices, empty for legacy .dat files (which keep only the means).
  std::map<std::string, ImatrixSums> sums;

  const std::vector<float>* find(const std::string& tensor) const;
};

// Reads either format (detected from the file's first bytes). Throws std::runtime_error with the
// file name and what is wrong.
ImportanceMatrix load_imatrix(const std::filesystem::path& path);

}  // namespace mixq
