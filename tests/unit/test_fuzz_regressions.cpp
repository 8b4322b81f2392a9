// Findings of fuzz/fuzz_model (issue 12), each reduced to the property that was broken.
#include <cmath>
#include <limits>
#include <vector>

#include "mixq/engine/kernels.h"
#include "test_support.h"

namespace mixq {
namespace {

// A model whose activations overflow (huge weights) or underflow: Q8_0/Q8_1 activation codes used
// to be a plain float -> int8 cast of round(x / d), undefined for inf and NaN (UBSan: "-nan is
// outside the range of representable values of type 'signed char'"; x86 gives 0 for all of them).
// Now they saturate: +-127 for +-inf, 0 for NaN.
TEST(FuzzRegressions, Q8_0ActivationCodesOfNonFiniteValuesSaturate) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float tiny = 1e-40f;  // subnormal: d = tiny / 127 is subnormal too and 1 / d overflows to inf
  std::vector<float> x(64, 0.0f);
  x[0] = tiny;
  x[1] = -tiny;
  x[2] = tiny / 2;
  x[32] = inf;
  x[33] = 1.0f;
  x[34] = nan;
  for (ActFormat f : {ActFormat::Q8_0, ActFormat::Q8_1}) {
    kernels::PreparedActs a;
    kernels::prepare_activations(f, x.data(), 1, 64, a);
    ASSERT_GE(a.q.size(), 64u);
    EXPECT_EQ(a.q[0], 127);   // tiny * inf
    EXPECT_EQ(a.q[1], -127);
    EXPECT_EQ(a.q[2], 127);
    EXPECT_EQ(a.q[3], 0);     // 0 * inf = NaN
    EXPECT_EQ(a.q[32], 0);    // amax = inf: 1 / d = 0, inf * 0 = NaN
    EXPECT_EQ(a.q[33], 0);
    EXPECT_EQ(a.q[34], 0);
  }
  // Finite activations keep ggml's codes: amax maps to +-127.
  std::vector<float> y(32, 0.5f);
  y[7] = -2.0f;
  kernels::PreparedActs a;
  kernels::prepare_activations(ActFormat::Q8_0, y.data(), 1, 32, a);
  EXPECT_EQ(a.q[7], -127);
  EXPECT_EQ(a.q[0], 32);  // round(0.5 * 127 / 2) = round(31.75)
}

}  // namespace
}  // namespace mixq
