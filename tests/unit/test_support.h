// Shared helpers for the unit tests: where the shared data lives, reading raw files.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace mixq::test {

// ../shared/data beside the checkout, or $MIXQ_SHARED_DATA. Empty when neither exists.
inline std::filesystem::path shared_data_dir() {
  if (const char* env = std::getenv("MIXQ_SHARED_DATA")) return env;
  std::filesystem::path p = MIXQ_DEFAULT_SHARED_DATA;
  if (std::filesystem::exists(p)) return std::filesystem::canonical(p);
  return {};
}

inline std::filesystem::path source_dir() { return MIXQ_SOURCE_DIR; }

// The bundled stories260K GGUF (assets/, byte-identical to the shared copy written by llama.cpp):
// tests that need only a real model run on it without the shared data.
inline std::filesystem::path stories260K_gguf() { return source_dir() / "assets/stories260K/stories260K-f32.gguf"; }

// Skips the current test with a clear message when the shared data (or one file in it) is absent.
#define MIXQ_REQUIRE_SHARED(rel)                                                              \
  do {                                                                                        \
    if (::mixq::test::shared_data_dir().empty() ||                                            \
        !std::filesystem::exists(::mixq::test::shared_data_dir() / (rel)))                    \
      GTEST_SKIP() << "shared data not found (" << (rel)                                      \
                   << "): put ../shared/data beside the checkout or set MIXQ_SHARED_DATA";    \
  } while (0)

template <typename T>
std::vector<T> read_raw(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  f.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(f.tellg());
  f.seekg(0);
  std::vector<T> v(size / sizeof(T));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
  return v;
}

// n draws of N(0, sigma), reproducible from the seed.
inline std::vector<float> gaussian(size_t n, float sigma, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// Two logit vectors of the same model side by side: the largest |b| (the scale) and the largest
// |a - b|, in double.
struct LogitGap {
  double scale = 0, max_diff = 0;
};
inline LogitGap logit_gap(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  LogitGap g;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    g.scale = std::max(g.scale, std::fabs(double{b[i]}));
    g.max_diff = std::max(g.max_diff, std::fabs(double{a[i]} - b[i]));
  }
  return g;
}

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Runs the built `mixq` with a shell-quoted argument string; `prefix` goes before it (e.g.
// "ulimit -f 64;").
inline CliResult run_cli(const std::string& args, const std::string& prefix = "") {
  const std::string cmd = prefix + " '" + std::string(MIXQ_CLI_PATH) + "' " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// Files in a directory (to check that nothing, not even a temporary file, was left behind).
inline std::vector<std::string> files_in(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}

inline std::filesystem::path temp_dir() {
  auto p = std::filesystem::temp_directory_path() / ("mixq-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(p);
  return p;
}

}  // namespace mixq::test
