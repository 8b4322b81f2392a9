// The sampler against distributions computed here independently: greedy is the argmax; with
// temperature T the frequencies of many seeded draws follow softmax(logits / T); top-k and top-p
// never draw outside their cut and renormalize inside it; a seed fixes the sequence.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "mixq/engine/sampler.h"

namespace mixq {
namespace {

// Draw counts of `draws` samples over the logits.
std::vector<int> histogram(const SamplerOptions& o, const std::vector<float>& logits, int draws) {
  Sampler s(o);
  std::vector<int> n(logits.size());
  for (int i = 0; i < draws; ++i) {
    const int32_t t = s.sample(logits.data(), static_cast<int>(logits.size()));
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(logits.size()));
    ++n[static_cast<size_t>(t)];
  }
  return n;
}

// Pearson's chi-square of counts against probabilities p (zero-probability tokens must not occur).
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
  double chi = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the cut but was drawn";
      continue;
    }
    const double e = p[i] * draws;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

std::vector<double> softmax(const std::vector<float>& logits, double temp) {
  std::vector<double> p(logits.size());
  double m = -INFINITY, sum = 0;
  for (float l : logits) m = std::max(m, static_cast<double>(l));
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp((logits[i] - m) / temp);
  for (auto& v : p) v /= sum;
  return p;
}

const std::vector<float> kLogits = {1.0f, 3.0f, -0.5f, 2.2f, 0.0f, 2.9f};

TEST(Sampler, GreedyIsTheArgmax) {
  Sampler s({0.0f, 40, 0.95f, 1});
  EXPECT_EQ(s.sample(kLogits.data(), static_cast<int>(kLogits.size())), 1);
  // top-k 1 is greedy at any temperature.
  Sampler k1({1.5f, 1, 1.0f, 7});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(k1.sample(kLogits.data(), static_cast<int>(kLogits.size())), 1);
}

// Critical values of chi-square at p = 0.001: 5 degrees of freedom 20.5, 2 degrees 13.8.
TEST(Sampler, TemperatureFollowsTheSoftmax) {
  constexpr int kDraws = 40000;
  for (float temp : {0.5f, 1.0f, 2.0f}) {
    const auto n = histogram({temp, 0, 1.0f, 42}, kLogits, kDraws);
    EXPECT_LT(chi_square(n, softmax(kLogits, temp), kDraws), 20.5) << "T=" << temp;
  }
  // A wrong temperature is detected: the draws at T=1 are far from softmax(logits / 2).
  const auto n1 = histogram({1.0f, 0, 1.0f, 42}, kLogits, kDraws);
  EXPECT_GT(chi_square(n1, softmax(kLogits, 2.0), kDraws), 100.0);
}

TEST(Sampler, TopKAndTopPCutAndRenormalize) {
  constexpr int kDraws = 40000;
  // top-k 3 keeps tokens 1, 5, 3 (logits 3.0, 2.9, 2.2).
  auto p = softmax(kLogits, 1.0);
  std::vector<double> k3(p.size(), 0.0);
  double s = p[1] + p[5] + p[3];
  for (int i : {1, 5, 3}) k3[static_cast<size_t>(i)] = p[static_cast<size_t>(i)] / s;
  EXPECT_LT(chi_square(histogram({1.0f, 3, 1.0f, 3}, kLogits, kDraws), k3, kDraws), 13.8);
  // top-p: probabilities 0.5, 0.3, 0.15, 0.05 (logits = log p); p = 0.7 keeps the first two
  // (0.5 < 0.7 <= 0.8).
  const std::vector<float> lp = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  const std::vector<double> nucleus = {0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0};
  const auto n = histogram({1.0f, 0, 0.7f, 9}, lp, kDraws);
  EXPECT_LT(chi_square(n, nucleus, kDraws), 10.8);  // 1 degree of freedom, p = 0.001
}

TEST(Sampler, TheSeedFixesTheSequence) {
  Sampler a({0.8f, 40, 0.95f, 123}), b({0.8f, 40, 0.95f, 123}), c({0.8f, 40, 0.95f, 124});
  std::vector<int32_t> sa, sb, sc;
  for (int i = 0; i < 64; ++i) {
    sa.push_back(a.sample(kLogits.data(), static_cast<int>(kLogits.size())));
    sb.push_back(b.sample(kLogits.data(), static_cast<int>(kLogits.size())));
    sc.push_back(c.sample(kLogits.data(), static_cast<int>(kLogits.size())));
  }
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa, sc);
}

// distribution() (what speculative decoding compares) is the distribution sample() draws from:
// the softmax computed here, cut and renormalized by hand; greedy is one-hot at the argmax.
TEST(Sampler, DistributionIsWhatSampleDrawsFrom) {
  const int n = static_cast<int>(kLogits.size());
  std::vector<float> p;
  Sampler({0.0f, 40, 0.95f, 1}).distribution(kLogits.data(), n, p);
  EXPECT_EQ(p, std::vector<float>({0, 1, 0, 0, 0, 0}));
  const std::vector<double> full = softmax(kLogits, 0.7);
  Sampler({0.7f, 0, 1.0f, 1}).distribution(kLogits.data(), n, p);
  for (int i = 0; i < n; ++i) EXPECT_NEAR(p[static_cast<size_t>(i)], full[static_cast<size_t>(i)], 1e-6);
  // top-k 3 keeps tokens 1, 5, 3 (logits 3, 2.9, 2.2).
  Sampler({0.7f, 3, 1.0f, 1}).distribution(kLogits.data(), n, p);
  const double k3 = full[1] + full[5] + full[3];
  for (int i = 0; i < n; ++i) {
    const bool kept = i == 1 || i == 5 || i == 3;
    EXPECT_NEAR(p[static_cast<size_t>(i)], kept ? full[static_cast<size_t>(i)] / k3 : 0.0, 1e-6) << i;
  }
  // top-p: the smallest head of the sorted distribution reaching p; 1 and 5 at T = 0.7 hold
  // less than 0.9, 1, 5, 3 more.
  ASSERT_LT(full[1] + full[5], 0.9);
  ASSERT_GE(k3, 0.9);
  Sampler({0.7f, 0, 0.9f, 1}).distribution(kLogits.data(), n, p);
  for (int i = 0; i < n; ++i) {
    const bool kept = i == 1 || i == 5 || i == 3;
    EXPECT_NEAR(p[static_cast<size_t>(i)], kept ? full[static_cast<size_t>(i)] / k3 : 0.0, 1e-6) << i;
  }
  // And sample() draws by it: frequencies of many draws.
  const SamplerOptions o{0.7f, 0, 0.9f, 3};
  const int draws = 20000;
  const std::vector<int> counts = histogram(o, kLogits, draws);
  std::vector<double> pd(p.begin(), p.end());
  EXPECT_LT(chi_square(counts, pd, draws), 13.8);  // 2 degrees of freedom at p = 0.001
}

}  // namespace
}  // namespace mixq
