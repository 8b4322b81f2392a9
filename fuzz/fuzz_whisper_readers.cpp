// libFuzzer entry point for the Whisper readers: whisper.cpp's model format (io/whisper_file.h,
// strict and with mixed weight types) and CTranslate2's model.bin (convert/ctranslate2.h). Both
// read from a path, so each input is written to a scratch file first; the first byte picks the
// reader. Any byte string must load or be rejected with an exception carrying a message.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "mixq/convert/ctranslate2.h"
#include "mixq/io/whisper_file.h"

namespace {

const std::filesystem::path& scratch() {
  static const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("mixq-fuzz-whisper-" + std::to_string(::getpid()) + ".bin");
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  {
    std::FILE* f = std::fopen(scratch().c_str(), "wb");
    if (f == nullptr) return 0;
    std::fwrite(data + 1, 1, size - 1, f);
    std::fclose(f);
  }
  try {
    if ((data[0] & 1) == 0) {
      const auto w = mixq::WhisperFile::open(scratch(), {.allow_mixed_weights = (data[0] & 2) != 0});
      // Decode every tensor the reader accepted: its byte count must match its type and shape.
      std::vector<float> v;
      for (const auto& t : w.tensors) {
        std::vector<uint8_t> bytes(t.data.begin(), t.data.end());
        v.resize(static_cast<size_t>(t.elements()));
        mixq::dequantize_rows(t.type, bytes.data(), v.data(), t.rows(), t.ne[0]);
      }
    } else {
      const auto m = mixq::Ct2Model::open(scratch());
      size_t n = 0;
      for (const auto& var : m.variables) n += m.to_float(var).size();
      volatile size_t sink = n;
      (void)sink;
    }
  } catch (const std::exception&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
