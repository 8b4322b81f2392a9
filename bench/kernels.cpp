// Single-thread throughput of the engine's matrix-product pieces for every kernel set this CPU runs:
// the in-place decode kernels (row_dot/SET/TYPE), the prefill panel kernel (panel/SET/TYPE: 2 panels
// of 16 rows x 4 tokens per call, as matmul runs it) and the panel packing, the 4-row x 2-token integer and F32 kernels, and the per-type row preparation (integer view or
// F32 decode) that a batched product does once per weight row tile. Row lengths 576 and 1536 are
// SmolLM2-135M's (n_embd, n_ff).
// Run: build/bench/mixq_bench_kernels [--benchmark_filter=avx512]
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "mixq/engine/kernels.h"
#include "mixq/engine/repack.h"
#include "mixq/formats/type_table.h"

namespace {

std::vector<float> gaussian(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& f : v) f = d(rng);
  return v;
}

// Four weight rows of `type` and two activation rows, prepared as the engine prepares them.
struct Operands {
  mixq::kernels::PreparedRow rows[4];
  mixq::kernels::PreparedActs acts;
  Operands(mixq::TypeId type, int64_t n) {
    const auto& t = mixq::type_traits(type);
    for (int r = 0; r < 4; ++r) {
      const auto w = gaussian(n, 1 + static_cast<unsigned>(r));
      std::vector<uint8_t> bytes(t.row_bytes(n));
      t.quantize_row(w.data(), bytes.data(), n, nullptr);
      mixq::kernels::prepare_row(t, bytes.data(), n, rows[r]);
    }
    const auto x = gaussian(2 * n, 9);
    mixq::kernels::prepare_activations(t.act_format, x.data(), 2, n, acts);
  }
};

void dot4(benchmark::State& state, const mixq::kernels::KernelSet* k, mixq::TypeId type, int64_t n) {
  Operands op(type, n);
  const mixq::kernels::PreparedRow* four[4] = {&op.rows[0], &op.rows[1], &op.rows[2], &op.rows[3]};
  float out[8];
  for (auto _ : state) {
    mixq::kernels::dot4(*k, four, op.acts, 0, 2, out);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations() * 8 * n);  // multiply-adds
}

void prepare(benchmark::State& state, mixq::TypeId type, int64_t n) {
  const auto& t = mixq::type_traits(type);
  const auto w = gaussian(n, 3);
  std::vector<uint8_t> bytes(t.row_bytes(n));
  t.quantize_row(w.data(), bytes.data(), n, nullptr);
  mixq::kernels::PreparedRow row;
  for (auto _ : state) {
    mixq::kernels::prepare_row(t, bytes.data(), n, row);
    benchmark::DoNotOptimize(row.q.data());
    benchmark::DoNotOptimize(row.f.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// The in-place decode kernel (RowDotFn) over 64 rows of the type (a 64-row slice of a weight
// matrix, 1536 values each: it stays in L2, so this is the kernel's compute rate, not memory's).
void row_dot(benchmark::State& state, mixq::kernels::RowDotFn fn, mixq::TypeId type, int64_t n) {
  const auto& t = mixq::type_traits(type);
  constexpr int kRows = 64;
  const size_t rb = t.row_bytes(n);
  std::vector<uint8_t> bytes(rb * kRows);
  for (int r = 0; r < kRows; ++r) {
    const auto w = gaussian(n, 3 + static_cast<unsigned>(r));
    t.quantize_row(w.data(), bytes.data() + rb * static_cast<size_t>(r), n, nullptr);
  }
  const auto x = gaussian(n, 9);
  mixq::kernels::PreparedActs acts;
  mixq::kernels::prepare_activations(t.act_format, x.data(), 1, n, acts);
  float out = 0;
  for (auto _ : state) {
    for (int r = 0; r < kRows; ++r) out += fn(bytes.data() + rb * static_cast<size_t>(r), n, acts.row(0));
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations() * kRows * n);  // multiply-adds
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(rb) * kRows);
}

// The four-row interleaved kernel (engine/repack.h) over the same 64 rows, repacked: 16 groups
// in one call, as matmul's decode runs a block of rows.
void row_dot4(benchmark::State& state, mixq::kernels::RowDot4Fn fn, mixq::TypeId type, int64_t n) {
  const auto& t = mixq::type_traits(type);
  constexpr int kRows = 64;
  const size_t rb = t.row_bytes(n);
  std::vector<uint8_t> bytes(rb * kRows), packed(rb * kRows);
  for (int r = 0; r < kRows; ++r) {
    const auto w = gaussian(n, 3 + static_cast<unsigned>(r));
    t.quantize_row(w.data(), bytes.data() + rb * static_cast<size_t>(r), n, nullptr);
  }
  mixq::kernels::repack_rows(type, bytes.data(), kRows, n, packed.data());
  const auto x = gaussian(n, 9);
  mixq::kernels::PreparedActs acts;
  mixq::kernels::prepare_activations(t.act_format, x.data(), 1, n, acts);
  float y[kRows];
  for (auto _ : state) {
    fn(packed.data(), n, kRows / 4, acts.row(0), y);
    benchmark::DoNotOptimize(y);
  }
  state.SetItemsProcessed(state.iterations() * kRows * n);  // multiply-adds
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(rb) * kRows);
}

// The prefill panel kernel: 32 rows (2 panels) against 4 tokens per call.
void panel(benchmark::State& state, const mixq::kernels::KernelSet* k, mixq::TypeId type, int64_t n) {
  const auto& t = mixq::type_traits(type);
  constexpr int P = mixq::kernels::kPanelRows;
  std::vector<mixq::kernels::PreparedRow> rows(2 * P);
  for (int r = 0; r < 2 * P; ++r) {
    const auto w = gaussian(n, 3 + static_cast<unsigned>(r));
    std::vector<uint8_t> bytes(t.row_bytes(n));
    t.quantize_row(w.data(), bytes.data(), n, nullptr);
    mixq::kernels::prepare_row(t, bytes.data(), n, rows[static_cast<size_t>(r)]);
  }
  mixq::kernels::PackedPanel panels[2];
  for (int p = 0; p < 2; ++p) {
    const mixq::kernels::PreparedRow* pr[P];
    for (int r = 0; r < P; ++r) pr[r] = &rows[static_cast<size_t>(P * p + r)];
    mixq::kernels::pack_panel(pr, P, panels[p]);
  }
  const auto x = gaussian(4 * n, 9);
  mixq::kernels::PreparedActs acts;
  mixq::kernels::prepare_activations(t.act_format, x.data(), 4, n, acts);
  const mixq::kernels::PackedPanel* pp[2] = {&panels[0], &panels[1]};
  std::vector<float> y(4 * 2 * P);
  for (auto _ : state) {
    k->panel_int8(pp, 2, acts, 0, 4, y.data(), 2 * P);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(state.iterations() * 2 * P * 4 * n);  // multiply-adds
}

const bool registered_panel = [] {
  for (const mixq::kernels::KernelSet* k : mixq::kernels::available_kernel_sets()) {
    if (k->panel_int8 == nullptr) continue;
    for (mixq::TypeId type : {mixq::TypeId::Q8_0, mixq::TypeId::Q5_0, mixq::TypeId::Q4_1, mixq::TypeId::Q4_K, mixq::TypeId::Q6_K,
                               mixq::TypeId::LB3, mixq::TypeId::LB2}) {
      const std::string tn = mixq::type_traits(type).name;
      benchmark::RegisterBenchmark(("panel/" + std::string(k->name) + "/" + tn + "/1536").c_str(), panel, k, type, int64_t{1536});
    }
  }
  return true;
}();

const bool registered_row_dot = [] {
  for (const mixq::kernels::KernelSet* k : mixq::kernels::available_kernel_sets()) {
    for (const mixq::TypeTraits& t : mixq::all_types()) {
      if (const auto fn = mixq::kernels::row_dot_for(*k, t.id)) {
        benchmark::RegisterBenchmark(("row_dot/" + std::string(k->name) + "/" + t.name + "/1536").c_str(), row_dot, fn, t.id,
                                     int64_t{1536});
      }
      // The interleaved layouts beside the per-row kernels they replace, at both SmolLM2 widths.
      if (const auto fn4 = mixq::kernels::row_dot4_for(*k, t.id)) {
        for (int64_t n : {576, 1536}) {
          const std::string name = std::string(k->name) + "/" + t.name + "/" + std::to_string(n);
          if (n != 1536) benchmark::RegisterBenchmark(("row_dot/" + name).c_str(), row_dot, row_dot_for(*k, t.id), t.id, n);
          benchmark::RegisterBenchmark(("row_dot4/" + name).c_str(), row_dot4, fn4, t.id, n);
        }
      }
    }
  }
  return true;
}();

const bool registered = [] {
  const mixq::TypeId types[] = {mixq::TypeId::F32, mixq::TypeId::Q8_0, mixq::TypeId::Q4_K, mixq::TypeId::Q4_1};
  for (int64_t n : {576, 1536}) {
    for (mixq::TypeId type : types) {
      const std::string tn = mixq::type_traits(type).name;
      for (const mixq::kernels::KernelSet* k : mixq::kernels::available_kernel_sets()) {
        benchmark::RegisterBenchmark(("dot4x2/" + std::string(k->name) + "/" + tn + "/" + std::to_string(n)).c_str(),
                                     dot4, k, type, n);
      }
      benchmark::RegisterBenchmark(("prepare_row/" + tn + "/" + std::to_string(n)).c_str(), prepare, type, n);
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
