// libFuzzer entry point for the model path past the reader: a byte string that parses as GGUF is
// loaded as the model it names (engine/registry.h; for llama: hyperparameters against the
// tensors, outlier-column companions) with
// its tokenizer, a short text is encoded and decoded, and two tokens run through the forward pass
// (the second attends to the first). Every step must either work or throw std::runtime_error
// with a message; anything else (a crash, a sanitizer report, std::bad_alloc, std::out_of_range,
// a hang) is a finding.
//
// Cost cap, here only (mixq itself loads models of any size): files whose tensors hold more than
// kMaxElements weights are skipped, so each input runs in milliseconds.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mixq/engine/registry.h"
#include "mixq/engine/tokenizer.h"
#include "mixq/io/gguf.h"

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 21;  // 8 MiB as F32; stories260K has 260K

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mixq::GgufFile f = mixq::GgufFile::parse({data, size}, "fuzz");
    int64_t elements = 0;
    for (const auto& t : f.tensors()) {
      elements += t.n_elements();
      if (t.n_elements() > kMaxElements || elements > kMaxElements) return 0;
    }
    const std::unique_ptr<mixq::Model> model = mixq::load_model(f);
    std::vector<int32_t> ids;
    try {
      const mixq::Tokenizer tok = mixq::Tokenizer::from_gguf(f);
      ids = tok.encode("Once upon a time, <s> 1234 caf\xc3\xa9 \xff\xfe!", true);
      volatile size_t sink = tok.decode(ids).size();
      (void)sink;
    } catch (const std::runtime_error&) {
      // A model without a usable tokenizer still runs on token ids.
    }
    const int n_vocab = model->n_vocab();
    std::vector<int32_t> tokens;
    for (int32_t id : ids) {
      if (tokens.size() < 2 && id >= 0 && id < n_vocab) tokens.push_back(id);
    }
    while (tokens.size() < 2) tokens.push_back(static_cast<int32_t>(tokens.size()) % n_vocab);
    const std::unique_ptr<mixq::Context> ctx = model->new_context(4, 1);
    // The three attention paths, chosen by the input so one corpus covers them all.
    static constexpr mixq::AttentionMode kModes[] = {mixq::AttentionMode::kLlamaCppF16, mixq::AttentionMode::kTiled,
                                                     mixq::AttentionMode::kF32};
    ctx->set_attention(kModes[size % 3]);
    ctx->eval({tokens[0]}, false);
    const std::vector<float>& logits = ctx->eval({tokens[1]}, true);
    float sum = 0.0f;
    for (float v : logits) sum += v;
    volatile float sink = sum;
    (void)sink;
  } catch (const std::runtime_error&) {
    // Refused with a message (GgufError is one): the expected outcome for a malformed model.
  }
  return 0;
}
