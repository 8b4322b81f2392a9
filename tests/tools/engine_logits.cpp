// Runs mixq's forward pass (any registered architecture) on a list of token ids and writes every
// position's logits (n_tokens x n_vocab float32, little-endian, row-major) to a file. The Python
// tests compare them with an independent numpy implementation (test_engine_reference.py, LLaMA)
// and with llama.cpp's logits (test_rwkv_llama_cpp.py, RWKV).
//
//   mixq_engine_logits MODEL.gguf OUT.bin [--f32-attention] [-t N] [--split K] TOKEN_ID...
//
// --f32-attention  F32 KV cache and attention (Context::set_attention(AttentionMode::kF32)).
// -t N             worker threads (default 4).
// --split K        evaluate the first K tokens in one eval() call and the rest in a second one,
//                  so the second call attends through the KV cache written by the first.
#include <bit>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "mixq/engine/registry.h"
#include "mixq/io/gguf.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: mixq_engine_logits MODEL.gguf OUT.bin [--f32-attention] [-t N] [--split K] TOKEN_ID...\n"
               "  writes n_tokens x n_vocab float32 logits (little-endian, row-major) to OUT.bin\n");
}

// Parses a whole decimal integer in [lo, hi]; false when it is not one.
bool parse_int(std::string_view s, long long lo, long long hi, long long& out) {
  if (s.empty()) return false;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && p == end && out >= lo && out <= hi;
}

}  // namespace

int main(int argc, char** argv) {
  static_assert(std::endian::native == std::endian::little, "logits are written as native little-endian floats");
  std::vector<std::string> positional;
  bool f32_attention = false;
  long long n_threads = 4, split = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--f32-attention") {
      f32_attention = true;
    } else if (a == "-t" || a == "--threads" || a == "--split") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "mixq_engine_logits: %s needs a value\n", argv[i]);
        usage();
        return 2;
      }
      long long& dst = a == "--split" ? split : n_threads;
      const long long lo = a == "--split" ? 0 : 1;
      if (!parse_int(argv[i + 1], lo, 1 << 20, dst)) {
        std::fprintf(stderr, "mixq_engine_logits: bad value '%s' for %s\n", argv[i + 1], argv[i]);
        return 2;
      }
      ++i;
    } else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else if (a.size() > 1 && a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')) {
      std::fprintf(stderr, "mixq_engine_logits: unknown option '%s'\n", argv[i]);
      usage();
      return 2;
    } else {
      positional.emplace_back(a);
    }
  }
  if (positional.size() < 3) {
    std::fprintf(stderr, "mixq_engine_logits: need MODEL.gguf, OUT.bin and at least one token id\n");
    usage();
    return 2;
  }
  std::vector<int32_t> tokens;
  for (size_t i = 2; i < positional.size(); ++i) {
    long long id = 0;
    if (!parse_int(positional[i], 0, INT32_MAX, id)) {
      std::fprintf(stderr, "mixq_engine_logits: bad token id '%s' (want a non-negative integer)\n", positional[i].c_str());
      return 2;
    }
    tokens.push_back(static_cast<int32_t>(id));
  }
  const auto n = static_cast<long long>(tokens.size());
  if (split >= 0 && (split == 0 || split >= n)) {
    std::fprintf(stderr, "mixq_engine_logits: --split %lld must be in [1, %lld) for %lld tokens\n", split, n, n);
    return 2;
  }

  try {
    const mixq::GgufFile file = mixq::GgufFile::open(positional[0]);
    const auto model = mixq::load_model(file);
    const int n_vocab = model->n_vocab();
    for (int32_t id : tokens) {
      if (id >= n_vocab) {
        std::fprintf(stderr, "mixq_engine_logits: token id %d out of range (n_vocab = %d)\n", id, n_vocab);
        return 2;
      }
    }
    const auto ctx = model->new_context(static_cast<int>(n), static_cast<int>(n_threads));
    if (f32_attention) ctx->set_attention(mixq::AttentionMode::kF32);

    std::vector<float> logits;
    logits.reserve(static_cast<size_t>(n) * static_cast<size_t>(n_vocab));
    auto run = [&](std::vector<int32_t> part) {
      const std::vector<float>& out = ctx->eval(part, /*all_logits=*/true);
      const size_t want = part.size() * static_cast<size_t>(n_vocab);
      if (out.size() != want) {
        throw std::runtime_error("eval returned " + std::to_string(out.size()) + " logits, expected " +
                                 std::to_string(want));
      }
      logits.insert(logits.end(), out.begin(), out.end());
    };
    if (split > 0) {
      run(std::vector<int32_t>(tokens.begin(), tokens.begin() + split));
      run(std::vector<int32_t>(tokens.begin() + split, tokens.end()));
    } else {
      run(tokens);
    }

    std::FILE* f = std::fopen(positional[1].c_str(), "wb");
    if (!f) {
      std::fprintf(stderr, "mixq_engine_logits: cannot open %s for writing\n", positional[1].c_str());
      return 1;
    }
    const size_t written = std::fwrite(logits.data(), sizeof(float), logits.size(), f);
    const bool ok = std::fclose(f) == 0 && written == logits.size();
    if (!ok) {
      std::fprintf(stderr, "mixq_engine_logits: failed writing %s\n", positional[1].c_str());
      return 1;
    }
    std::printf("wrote %s: %lld x %d logits\n", positional[1].c_str(), n, n_vocab);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixq_engine_logits: %s\n", e.what());
    return 1;
  }
  return 0;
}
