#include "mixq/engine/decode_cost.h"

#include <algorithm>
#include <ctime>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

double DecodeCost::of(TypeId t) const {
  const auto it = ns_per_weight.find(t);
  if (it == ns_per_weight.end()) {
    throw std::runtime_error(fmt::format("decode cost: type {} was not timed", type_traits(t).name));
  }
  return it->second;
}

double DecodeCost::ms(TypeId t, int64_t weights, uint64_t bytes) const {
  const double compute = of(t) * static_cast<double>(weights) * 1e-6;
  const double read = read_bytes_per_second > 0 ? static_cast<double>(bytes) / read_bytes_per_second * 1e3 : 0.0;
  return std::max(compute, read);
}

namespace {

// This thread's CPU seconds: what the timing loops count, so that other processes sharing the
// cores do not inflate the figures (a preempted loop stops this clock).
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One thread reading `bytes` of memory (8-byte words summed) until min_seconds have passed.
double read_bandwidth(size_t bytes, double min_seconds) {
  std::vector<uint64_t> buf(bytes / sizeof(uint64_t));
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;  // touch every page
  volatile uint64_t sink = 0;
  const double start = thread_seconds();
  int64_t passes = 0;
  double elapsed = 0;
  do {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= buf.size(); i += 4) {
      s0 += buf[i];
      s1 += buf[i + 1];
      s2 += buf[i + 2];
      s3 += buf[i + 3];
    }
    sink = sink + s0 + s1 + s2 + s3;
    ++passes;
    elapsed = thread_seconds() - start;
  } while (elapsed < min_seconds);
  return static_cast<double>(passes) * static_cast<double>(buf.size() * sizeof(uint64_t)) / elapsed;
}

// One pass of the one-token product over every row, as MatMul's decode path computes it.
float one_token_product(const kernels::KernelSet& k, const TypeTraits& type, const std::vector<uint8_t>& w,
                        int64_t n, int64_t rows, const kernels::PreparedActs& acts, std::vector<kernels::PreparedRow>& prep) {
  const size_t row_bytes = type.row_bytes(n);
  float sink = 0;
  if (const kernels::RowDotFn row_dot = kernels::row_dot_for(k, type.id)) {
    for (int64_t r = 0; r < rows; ++r) {
      sink += row_dot(w.data() + static_cast<size_t>(r) * row_bytes, n, acts.row(0));
    }
    return sink;
  }
  for (int64_t r0 = 0; r0 + 4 <= rows; r0 += 4) {
    for (int i = 0; i < 4; ++i) {
      kernels::prepare_row(type, w.data() + static_cast<size_t>(r0 + i) * row_bytes, n, prep[static_cast<size_t>(i)]);
    }
    const kernels::PreparedRow* four[4] = {&prep[0], &prep[1], &prep[2], &prep[3]};
    float out[8];
    kernels::dot4(k, four, acts, 0, 1, out);
    sink += out[0] + out[1] + out[2] + out[3];
  }
  return sink;
}

}  // namespace

DecodeCost measure_decode_cost(const std::vector<TypeId>& types, const kernels::KernelSet& k, int64_t row_length,
                               int64_t rows, double min_seconds, size_t read_buffer_bytes) {
  if (row_length <= 0 || row_length % 256 != 0 || rows < 4) {
    throw std::runtime_error(fmt::format("decode cost: rows of {} x {}: give a row length that is a multiple of 256 and "
                                         "at least 4 rows", rows, row_length));
  }
  DecodeCost cost;
  cost.kernels = k.name;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(row_length)), values(static_cast<size_t>(row_length * rows));
  for (float& v : x) v = normal(rng);
  for (float& v : values) v = normal(rng) * 0.02f;
  std::vector<kernels::PreparedRow> prep(4);
  for (TypeId id : types) {
    const TypeTraits& type = type_traits(id);
    if (!type.can_quantize() || !type.can_dequantize() || !type.fits_row(row_length)) continue;
    const size_t row_bytes = type.row_bytes(row_length);
    std::vector<uint8_t> w(row_bytes * static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      type.quantize_row(values.data() + static_cast<size_t>(r * row_length), w.data() + static_cast<size_t>(r) * row_bytes,
                        row_length, nullptr);
    }
    kernels::PreparedActs acts;
    kernels::prepare_activations(type.act_format, x.data(), 1, row_length, acts);
    volatile float sink = one_token_product(k, type, w, row_length, rows, acts, prep);  // warm the caches
    const double start = thread_seconds();
    int64_t passes = 0;
    double elapsed = 0;
    do {
      sink = sink + one_token_product(k, type, w, row_length, rows, acts, prep);
      ++passes;
      elapsed = thread_seconds() - start;
    } while (elapsed < min_seconds);
    cost.ns_per_weight[id] = elapsed * 1e9 / (static_cast<double>(passes) * static_cast<double>(rows * row_length));
  }
  if (read_buffer_bytes > 0) cost.read_bytes_per_second = read_bandwidth(read_buffer_bytes, std::max(min_seconds, 0.1));
  return cost;
}

}  // namespace mixq
