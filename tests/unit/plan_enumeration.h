// Brute force for the plan tests: every combination of one candidate per tensor.
#pragma once

#include <cstddef>
#include <vector>

#include "mixq/plan/measurement.h"

namespace mixq::test {

// Calls f(pick) for every pick (pick[i]: an index into m.tensors[i].candidates).
template <typename F>
void for_each_pick(const Measurement& m, F&& f) {
  const size_t n = m.tensors.size();
  std::vector<size_t> pick(n, 0);
  for (;;) {
    f(pick);
    size_t i = 0;
    while (i < n && ++pick[i] == m.tensors[i].candidates.size()) pick[i++] = 0;
    if (i == n) break;
  }
}

}  // namespace mixq::test
