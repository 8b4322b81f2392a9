// Prompt processing and token generation speed of the engine, measured the way llama.cpp's
// llama-bench measures them, so bench/vs_llamacpp.sh can set the two side by side: pp = one batch
// of P random tokens from an empty context; tg = N tokens evaluated one at a time (each the
// previous step's argmax, as in greedy decoding) after a 1-token warm-up. Each test is repeated R
// times; the mean and standard deviation of the rates are printed as
//   mixq pp512 t=1: 1234.5 +- 6.7 tok/s
// Run: build/bench/mixq_bench_decode MODEL [-t THREADS] [-p 512] [-n 128] [-r 3] [-a f16|tiled|f32]
// tg also prints its process CPU time per token (min of the R runs) on stderr.
// MIXQ_REPACK=0 in the environment: decode from the file's layout (default: the interleaved layouts
// in place, Model::repack_for_decode, where the kernel set has them).
// (-a: the attention mode, as --attention of the commands; default f16. llama.cpp's CPU flash
// attention runs its tiled F32 path for prompt batches and its F16 one for single tokens.)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "mixq/engine/registry.h"
#include "mixq/io/gguf.h"

namespace {

struct Stats {
  double mean = 0, sd = 0;
};
Stats stats(const std::vector<double>& v) {
  Stats s;
  for (double x : v) s.mean += x / static_cast<double>(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / static_cast<double>(v.size() - 1)) : 0.0;
  return s;
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
int argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs("usage: mixq_bench_decode MODEL [-t THREADS] [-p PROMPT_TOKENS] [-n GEN_TOKENS] [-r REPEATS] [-a f16|tiled|f32]\n", stderr);
    return 2;
  }
  const std::string path = argv[1];
  int threads = 1, p = 512, n = 128, reps = 3;
  mixq::AttentionMode attention = mixq::AttentionMode::kLlamaCppF16;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "-a") {
      attention = mixq::parse_attention_mode(argv[i + 1]);
      continue;
    }
    const int v = std::stoi(argv[i + 1]);
    if (k == "-t") threads = v;
    else if (k == "-p") p = v;
    else if (k == "-n") n = v;
    else if (k == "-r") reps = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const mixq::GgufFile f = mixq::GgufFile::open(path);
  const auto model = mixq::load_model(f);
  const int vocab = model->n_vocab();
  const auto ctx = model->new_context(std::max(p, n + 1) + 1, threads);
  ctx->set_attention(attention);
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  using clock = std::chrono::steady_clock;
  if (p > 0) {
    std::vector<double> rates;
    for (int r = 0; r <= reps; ++r) {  // run 0 warms up (page cache, allocations)
      std::vector<int32_t> prompt(static_cast<size_t>(p));
      for (auto& t : prompt) t = tok(rng);
      ctx->reset();
      const auto t0 = clock::now();
      ctx->eval(prompt, false);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      if (r > 0) rates.push_back(p / s);
    }
    const Stats st = stats(rates);
    fmt::print("mixq pp{} t={}: {:.1f} +- {:.1f} tok/s\n", p, threads, st.mean, st.sd);
  }
  if (n > 0) {
    std::vector<double> rates;
    double cpu_min = 0;
    for (int r = 0; r <= reps; ++r) {
      ctx->reset();
      int next = argmax(ctx->eval({tok(rng)}, false).data(), vocab);
      const auto t0 = clock::now();
      const double c0 = process_cpu_seconds();
      for (int i = 0; i < n; ++i) next = argmax(ctx->eval({next}, false).data(), vocab);
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      const double c = process_cpu_seconds() - c0;
      if (r > 0) rates.push_back(n / s);
      if (r > 0 && (cpu_min == 0 || c < cpu_min)) cpu_min = c;
    }
    const Stats st = stats(rates);
    fmt::print("mixq tg{} t={}: {:.1f} +- {:.1f} tok/s\n", n, threads, st.mean, st.sd);
    // CPU time (all threads, the pool's spinning included) per token, min over the runs: what
    // other processes on a shared machine inflate least. On stderr, beside the rate.
    fmt::print(stderr, "mixq tg{} t={}: cpu {:.3f} ms/token (process CPU time, min of {})\n", n, threads, 1e3 * cpu_min / n, reps);
  }
  return 0;
}
