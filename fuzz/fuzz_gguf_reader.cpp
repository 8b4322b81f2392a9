// libFuzzer entry point: any byte string must either parse as GGUF or be rejected with a
// GgufError; never crash, hang, read out of bounds or allocate without bound. A file that parses
// is then used the way the tools use it: every tensor's bytes read, every value rendered, every
// tensor's outlier-column companions (quantize --outliers) validated and decoded.
#include <cstddef>
#include <cstdint>

#include "mixq/io/outlier_columns.h"
#include "mixq/io/gguf.h"
#include "mixq/io/inspect.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mixq::GgufFile f = mixq::GgufFile::parse({data, size}, "fuzz");
    uint32_t sum = 0;
    for (const auto& t : f.tensors()) {
      for (uint8_t b : t.bytes()) sum += b;
    }
    for (const auto& t : f.tensors()) {
      try {
        const mixq::OutlierColumns oc = mixq::load_outlier_columns(f, t);
        sum += static_cast<uint32_t>(oc.k());
      } catch (const mixq::GgufError&) {
        // Malformed companions are refused with a message naming the tensor.
      }
    }
    for (const auto& kv : f.metadata()) sum += static_cast<uint32_t>(kv.value.to_string().size());
    sum += static_cast<uint32_t>(
        mixq::inspect_json(f).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).size());
    sum += static_cast<uint32_t>(mixq::inspect_text(f).size());
    volatile uint32_t sink = sum;
    (void)sink;
  } catch (const mixq::GgufError&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
