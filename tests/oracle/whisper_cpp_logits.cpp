// The oracle side of the logits check (tests/python/test_whisper_eval.py): whisper.cpp's decoder
// logits for a given token sequence on one audio file. Built against the whisper.cpp library in the
// dev cache by scripts/whisper_cpp_logits.sh, never by mixq's CMake.
//
//   whisper_cpp_logits MODEL.bin AUDIO.wav TOKENS.bin OUT.bin [--no-flash-attn] [-t N]
//
// TOKENS.bin and OUT.bin share one layout (what `mixq transcribe --dump-logits` writes):
// "MXWL", int32 rows, int32 n_vocab, int32 token[rows], float32 logits[rows][n_vocab], where row i
// holds the logits after the decoder read token[0..i]. The tokens are read from TOKENS.bin (its
// logits are ignored) and fed one at a time, whisper_decode then whisper_get_logits.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common-whisper.h"
#include "whisper.h"

namespace {

bool read_tokens(const char* path, std::vector<int32_t>& tokens) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  char magic[4];
  int32_t rows = 0, n_vocab = 0;
  bool ok = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "MXWL", 4) == 0 &&
            std::fread(&rows, 4, 1, f) == 1 && std::fread(&n_vocab, 4, 1, f) == 1 && rows > 0 && rows < 4096;
  if (ok) {
    tokens.resize(rows);
    ok = std::fread(tokens.data(), 4, rows, f) == static_cast<size_t>(rows);
  }
  std::fclose(f);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s MODEL.bin AUDIO.wav TOKENS.bin OUT.bin [--no-flash-attn] [-t N]\n", argv[0]);
    return 2;
  }
  bool flash_attn = true;
  int threads = 2;
  for (int i = 5; i < argc; ++i) {
    if (std::strcmp(argv[i], "--no-flash-attn") == 0) {
      flash_attn = false;
    } else if (std::strcmp(argv[i], "-t") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "unknown option %s\n", argv[i]);
      return 2;
    }
  }
  std::vector<int32_t> tokens;
  if (!read_tokens(argv[3], tokens)) {
    std::fprintf(stderr, "%s: not a token/logits file (MXWL)\n", argv[3]);
    return 1;
  }
  std::vector<float> pcm;
  std::vector<std::vector<float>> stereo;
  if (!read_audio_data(argv[2], pcm, stereo, false)) {
    std::fprintf(stderr, "%s: cannot read the audio\n", argv[2]);
    return 1;
  }
  whisper_context_params cp = whisper_context_default_params();
  cp.use_gpu = false;
  cp.flash_attn = flash_attn;
  whisper_context* ctx = whisper_init_from_file_with_params(argv[1], cp);
  if (!ctx) return 1;
  if (whisper_pcm_to_mel(ctx, pcm.data(), static_cast<int>(pcm.size()), threads) != 0 ||
      whisper_encode(ctx, 0, threads) != 0) {
    std::fprintf(stderr, "whisper.cpp: mel or encoder failed\n");
    return 1;
  }
  const int n_vocab = whisper_n_vocab(ctx);
  std::vector<float> logits(tokens.size() * static_cast<size_t>(n_vocab));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (whisper_decode(ctx, &tokens[i], 1, static_cast<int>(i), threads) != 0) {
      std::fprintf(stderr, "whisper.cpp: decode failed at token %zu\n", i);
      return 1;
    }
    std::memcpy(logits.data() + i * n_vocab, whisper_get_logits(ctx), sizeof(float) * n_vocab);
  }
  FILE* out = std::fopen(argv[4], "wb");
  if (!out) return 1;
  const int32_t rows = static_cast<int32_t>(tokens.size());
  std::fwrite("MXWL", 1, 4, out);
  std::fwrite(&rows, 4, 1, out);
  std::fwrite(&n_vocab, 4, 1, out);
  std::fwrite(tokens.data(), 4, tokens.size(), out);
  std::fwrite(logits.data(), 4, logits.size(), out);
  const bool ok = std::fclose(out) == 0;
  whisper_free(ctx);
  return ok ? 0 : 1;
}
