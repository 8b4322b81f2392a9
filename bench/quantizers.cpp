// Single-thread throughput of every quantizer and dequantizer in the type table, on 8 rows of
// 4096 N(0, 0.02) values (the shape of the golden vectors), with and without importance weights.
// quantize/ and quantize_imatrix/ run the searches this CPU runs best (formats/search_isa.h: AVX-512
// where available); quantize_reference/ the portable reference searches, for the per-type speed-up
// in one run (both write the same bytes: tests/unit/test_search_simd.cpp). quantize_576_*: rows of
// SmolLM2's width, row by row and (block-local types) in one call.
// Run: build/bench/mixq_bench_quantizers [--benchmark_filter=q4_K]
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "mixq/formats/search_isa.h"
#include "mixq/formats/type_table.h"

namespace {

constexpr int64_t kRows = 8, kCols = 4096;

const std::vector<float>& input() {
  static const std::vector<float> x = [] {
    std::mt19937 rng(42);
    std::normal_distribution<float> d(0.0f, 0.02f);
    std::vector<float> v(kRows * kCols);
    for (auto& f : v) f = d(rng);
    return v;
  }();
  return x;
}

const std::vector<float>& importance() {
  static const std::vector<float> w = [] {
    std::mt19937 rng(7);
    std::lognormal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(kCols);
    for (auto& f : v) f = d(rng);
    return v;
  }();
  return w;
}

void quantize(benchmark::State& state, mixq::TypeId type, bool with_importance, mixq::search::Isa isa) {
  const auto& t = mixq::type_traits(type);
  std::vector<uint8_t> q(t.row_bytes(kCols) * kRows);
  const mixq::search::Isa before = mixq::search::isa();
  mixq::search::set_isa(isa);
  for (auto _ : state) {
    mixq::quantize_rows(type, input().data(), q.data(), kRows, kCols, with_importance ? importance().data() : nullptr);
    benchmark::DoNotOptimize(q.data());
  }
  mixq::search::set_isa(before);
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
  state.SetLabel(mixq::search::isa_name(isa == mixq::search::Isa::avx512 && !mixq::search::avx512_available()
                                            ? mixq::search::Isa::scalar
                                            : isa));
}

// SmolLM2's row width (576 = 18 blocks of 32, no multiple of the legacy search's 16-block groups):
// 57 rows one call each (quantize_rows, as with importance weights), or, for the block-local
// types, in one call (as quantize_model hands them a chunk of rows without importance).
void quantize_576(benchmark::State& state, mixq::TypeId type, bool one_call) {
  constexpr int64_t kWidth = 576, kRows576 = 57;
  const auto& t = mixq::type_traits(type);
  std::vector<uint8_t> q(t.row_bytes(kWidth) * kRows576);
  for (auto _ : state) {
    if (one_call) {
      t.quantize_row(input().data(), q.data(), kWidth * kRows576, nullptr);
    } else {
      mixq::quantize_rows(type, input().data(), q.data(), kRows576, kWidth, nullptr);
    }
    benchmark::DoNotOptimize(q.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows576 * kWidth);
}

void dequantize(benchmark::State& state, mixq::TypeId type) {
  const auto& t = mixq::type_traits(type);
  std::vector<uint8_t> q(t.row_bytes(kCols) * kRows);
  std::vector<float> y(kRows * kCols);
  mixq::quantize_rows(type, input().data(), q.data(), kRows, kCols);
  for (auto _ : state) {
    mixq::dequantize_rows(type, q.data(), y.data(), kRows, kCols);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * kRows * kCols);
}

const bool registered = [] {
  for (const auto& t : mixq::all_types()) {
    if (!t.can_quantize() || !t.can_dequantize() || !t.quantized || t.id == mixq::TypeId::Q8_K ||
        t.id == mixq::TypeId::Q8_1) {
      continue;
    }
    const std::string name = t.name;
    const mixq::search::Isa best = mixq::search::isa();
    benchmark::RegisterBenchmark(("quantize/" + name).c_str(), quantize, t.id, false, best);
    benchmark::RegisterBenchmark(("quantize_imatrix/" + name).c_str(), quantize, t.id, true, best);
    benchmark::RegisterBenchmark(("quantize_reference/" + name).c_str(), quantize, t.id, false,
                                 mixq::search::Isa::scalar);
    benchmark::RegisterBenchmark(("dequantize/" + name).c_str(), dequantize, t.id);
    if (t.block_size == 32) {
      benchmark::RegisterBenchmark(("quantize_576_per_row/" + name).c_str(), quantize_576, t.id, false);
      if (t.block_local) benchmark::RegisterBenchmark(("quantize_576_one_call/" + name).c_str(), quantize_576, t.id, true);
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
