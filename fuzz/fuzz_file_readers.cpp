// libFuzzer entry point for mixq's other file readers: importance matrices (llama.cpp's GGUF
// imatrix and the legacy .dat) and stored KLD base runs. Both read from a path, so each input is
// written to a scratch file first. Any byte string must load or be rejected with an exception
// carrying a message; never crash, hang, read out of bounds or allocate without bound.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "mixq/calib/imatrix.h"
#include "mixq/eval/kld.h"

namespace {

const std::filesystem::path& scratch() {
  static const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("mixq-fuzz-" + std::to_string(::getpid()) + ".bin");
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the reader, so one corpus covers both.
  const bool imatrix = (data[0] & 1) == 0;
  {
    std::FILE* f = std::fopen(scratch().c_str(), "wb");
    if (f == nullptr) return 0;
    std::fwrite(data + 1, 1, size - 1, f);
    std::fclose(f);
  }
  try {
    if (imatrix) {
      const mixq::ImportanceMatrix m = mixq::load_imatrix(scratch());
      size_t sum = 0;
      for (const auto& [name, w] : m.weights) sum += name.size() + w.size();
      volatile size_t sink = sum;
      (void)sink;
    } else {
      const mixq::BaseLogitsInfo info = mixq::read_base_logits_info(scratch());
      volatile size_t sink = info.tokens.size();
      (void)sink;
    }
  } catch (const std::exception&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
