// llama.cpp's logits for a given token sequence: the dev-time oracle that tests mixq's forward
// pass on a file in llama.cpp's layout against llama.cpp itself (tests/python/test_rwkv_llama_cpp.py).
// Built by scripts/llama_cpp_logits.sh against the oracle build's libllama, never by CMake; nothing
// of llama.cpp enters the repository.
//
//   llama_cpp_logits MODEL.gguf TOKENS.i32 OUT.f32 [-t THREADS]
// TOKENS.i32: little-endian int32 token ids. The whole sequence is evaluated as one batch from an
// empty state (one sequence; the batch is split into ubatches only by llama.cpp's own rules), with
// every position's logits requested. OUT.f32: n_tokens x n_vocab float32 logits, position-major.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "llama.h"

namespace {

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

std::vector<int32_t> read_tokens(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot open %s\n", path);
    std::exit(1);
  }
  std::vector<int32_t> t;
  int32_t v = 0;
  while (std::fread(&v, sizeof v, 1, f) == 1) t.push_back(v);
  std::fclose(f);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fputs("usage: llama_cpp_logits MODEL.gguf TOKENS.i32 OUT.f32 [-t THREADS]\n", stderr);
    return 2;
  }
  int threads = 1;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "-t") == 0) threads = std::atoi(argv[i + 1]);
  }
  const std::vector<int32_t> tokens = read_tokens(argv[2]);
  if (tokens.empty()) {
    std::fputs("no tokens\n", stderr);
    return 1;
  }
  llama_log_set(quiet_log, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.progress_callback = [](float, void*) { return true; };  // no progress dots on stderr
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (model == nullptr) {
    std::fprintf(stderr, "llama.cpp cannot load %s\n", argv[1]);
    return 1;
  }
  const int n = static_cast<int>(tokens.size());
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(n);
  cp.n_batch = static_cast<uint32_t>(n);
  cp.n_ubatch = static_cast<uint32_t>(n);
  cp.n_seq_max = 1;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) {
    std::fputs("llama.cpp cannot create a context\n", stderr);
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  llama_batch batch = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    batch.token[i] = tokens[static_cast<size_t>(i)];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = n;
  if (llama_decode(ctx, batch) != 0) {
    std::fputs("llama_decode failed\n", stderr);
    return 1;
  }
  FILE* out = std::fopen(argv[3], "wb");
  if (out == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", argv[3]);
    return 1;
  }
  for (int i = 0; i < n; ++i) {
    const float* l = llama_get_logits_ith(ctx, i);
    if (l == nullptr || std::fwrite(l, sizeof(float), static_cast<size_t>(n_vocab), out) != static_cast<size_t>(n_vocab)) {
      std::fprintf(stderr, "no logits for position %d\n", i);
      return 1;
    }
  }
  if (std::fclose(out) != 0) return 1;
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
