// What one generated token costs per weight type on this CPU, on one thread: the time the
// engine's one-token matrix product (MatMul's decode path: the type's in-place kernel where it has
// one, else its prepared rows) takes per weight on a synthetic matrix of that type held in cache,
// and the rate at which one thread reads memory. A tensor's time is the larger of its compute
// (weights x ns per weight) and its reading (bytes / bandwidth): a roofline, since decoding a
// model streams every weight from memory once per token. `mixq plan --max-ms-per-token` prices
// each tensor's candidate types with it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mixq/engine/kernels.h"
#include "mixq/formats/type_table.h"

namespace mixq {

struct DecodeCost {
  std::map<TypeId, double> ns_per_weight;  // one thread, one token, weights in cache
  double read_bytes_per_second = 0;         // one thread streaming a buffer far larger than the caches
  std::string kernels;                      // the kernel set measured (KernelSet::name)
  // ns per weight of `t`; throws std::runtime_error when t was not measured.
  double of(TypeId t) const;
  // Milliseconds one token spends on a tensor of `weights` weights stored in `bytes` bytes of type t.
  double ms(TypeId t, int64_t weights, uint64_t bytes) const;
};

// Times (in this thread's CPU time) the one-token product of a matrix of `rows` rows of `row_length` weights (a multiple of
// 256, so that every type fits) in each type, for at least min_seconds each, on one thread with
// kernel set k, and the read bandwidth over read_buffer_bytes. Types mixq cannot quantize or
// decode are skipped.
DecodeCost measure_decode_cost(const std::vector<TypeId>& types, const kernels::KernelSet& k,
                               int64_t row_length = 1536, int64_t rows = 512, double min_seconds = 0.02,
                               size_t read_buffer_bytes = size_t{256} << 20);

}  // namespace mixq
