#include "mixq/eval/kld_stats.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/eval/scores.h"

namespace mixq {

namespace {

struct Moments {
  double mean = 0, var = 0;  // population variance
};

Moments moments(const std::vector<double>& x) {
  Moments m;
  if (x.empty()) return m;
  double s = 0;
  for (double v : x) s += v;
  m.mean = s / static_cast<double>(x.size());
  double s2 = 0;
  for (double v : x) s2 += (v - m.mean) * (v - m.mean);
  m.var = s2 / static_cast<double>(x.size());
  return m;
}

// Standard error of a mean of n values with population variance var (llama.cpp: sqrt(var / (n - 1))).
double std_error(double var, size_t n) { return n > 1 && var > 0 ? std::sqrt(var / static_cast<double>(n - 1)) : 0; }

nlohmann::ordered_json estimate_json(const Estimate& e) { return {{"value", e.value}, {"error", e.error}}; }

nlohmann::ordered_json quantiles_json(const Quantiles& q) {
  return {{"min", q.min},     {"p1", q.p01}, {"p5", q.p05}, {"p10", q.p10}, {"p25", q.p25},   {"median", q.median},
          {"p75", q.p75},     {"p90", q.p90}, {"p95", q.p95}, {"p99", q.p99}, {"p99.9", q.p999}, {"max", q.max}};
}
}  // namespace

Quantiles quantiles(std::vector<double> v) {
  Quantiles q;
  if (v.empty()) return q;
  std::sort(v.begin(), v.end());
  const auto at = [&](double p) {
    const double pos = p * static_cast<double>(v.size() - 1);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
  };
  q.min = v.front();
  q.p01 = at(0.01);
  q.p05 = at(0.05);
  q.p10 = at(0.10);
  q.p25 = at(0.25);
  q.median = at(0.5);
  q.p75 = at(0.75);
  q.p90 = at(0.90);
  q.p95 = at(0.95);
  q.p99 = at(0.99);
  q.p999 = at(0.999);
  q.max = v.back();
  return q;
}

KldStats summarize(const KldTokens& t, int chunks, int n_ctx) {
  const size_t n = t.size();
  if (n < 2) throw std::runtime_error("KL divergence statistics need at least two scored tokens");
  KldStats s;
  s.chunks = chunks;
  s.n_ctx = n_ctx;
  s.tokens = static_cast<int64_t>(n);
  const Moments mb = moments(t.nll_base), mm = moments(t.nll_model);
  const PplEstimate eb = ppl_from_nll(mb.mean, mb.var, static_cast<int64_t>(n));
  const PplEstimate em = ppl_from_nll(mm.mean, mm.var, static_cast<int64_t>(n));
  s.ppl_base = {eb.ppl, eb.error};
  s.ppl_model = {em.ppl, em.error};
  double cov = 0;
  std::vector<double> diff(n);
  for (size_t i = 0; i < n; ++i) {
    cov += (t.nll_model[i] - mm.mean) * (t.nll_base[i] - mb.mean);
    diff[i] = t.nll_model[i] - t.nll_base[i];
  }
  cov /= static_cast<double>(n);
  s.ppl_correlation = mb.var > 0 && mm.var > 0 ? cov / std::sqrt(mb.var * mm.var) : 1.0;
  const Moments md = moments(diff);
  s.ln_ppl_ratio = {md.mean, std_error(md.var, n)};
  s.ppl_ratio = {std::exp(md.mean), std::exp(md.mean) * s.ln_ppl_ratio.error};
  // PPL(model) - PPL(base) by error propagation, with the covariance of the two mean NLLs.
  const double pm = s.ppl_model.value, pb = s.ppl_base.value;
  const double var_diff = (pm * pm * mm.var + pb * pb * mb.var - 2 * pm * pb * cov) / static_cast<double>(n - 1);
  s.ppl_diff = {pm - pb, var_diff > 0 ? std::sqrt(var_diff) : 0};

  const Moments mk = moments(t.kld);
  s.kld = {mk.mean, std_error(mk.var, n)};
  s.kld_q = quantiles(t.kld);

  size_t same = 0;
  for (uint8_t v : t.same_top) same += v;
  const double f = static_cast<double>(same) / static_cast<double>(n);
  s.same_top = {f, std_error(f * (1 - f), n)};

  const Moments mp = moments(t.delta_p);
  s.delta_p = {mp.mean, std_error(mp.var, n)};
  std::vector<double> sq(n);
  for (size_t i = 0; i < n; ++i) sq[i] = t.delta_p[i] * t.delta_p[i];
  const Moments ms = moments(sq);
  const double rms = std::sqrt(ms.mean);
  // d sqrt(x) = dx / (2 sqrt(x))
  s.rms_delta_p = {rms, rms > 0 ? std_error(ms.var, n) / (2 * rms) : 0};
  s.delta_p_q = quantiles(t.delta_p);
  return s;
}

nlohmann::ordered_json KldStats::to_json() const {
  nlohmann::ordered_json j;
  j["chunks"] = chunks;
  j["n_ctx"] = n_ctx;
  j["tokens"] = tokens;
  j["ppl_base"] = estimate_json(ppl_base);
  j["ppl_model"] = estimate_json(ppl_model);
  j["ppl_ratio"] = estimate_json(ppl_ratio);
  j["ln_ppl_ratio"] = estimate_json(ln_ppl_ratio);
  j["ppl_diff"] = estimate_json(ppl_diff);
  j["ppl_increase"] = ppl_increase();
  j["ppl_correlation"] = ppl_correlation;
  nlohmann::ordered_json k = {{"mean", kld.value}, {"error", kld.error}};
  k.update(quantiles_json(kld_q));
  j["kld"] = k;
  j["same_top"] = {{"fraction", same_top.value}, {"error", same_top.error}};
  nlohmann::ordered_json p = {{"mean", delta_p.value},
                              {"error", delta_p.error},
                              {"rms", rms_delta_p.value},
                              {"rms_error", rms_delta_p.error}};
  p.update(quantiles_json(delta_p_q));
  j["delta_p"] = p;
  return j;
}

std::string KldStats::to_text() const {
  std::string s;
  auto line = [&](fmt::string_view f, auto&&... args) { s += fmt::vformat(f, fmt::make_format_args(args...)) + "\n"; };
  line("====== Perplexity statistics ======");
  line("Mean PPL(Q)                   : {:10.6f} ± {:10.6f}", ppl_model.value, ppl_model.error);
  line("Mean PPL(base)                : {:10.6f} ± {:10.6f}", ppl_base.value, ppl_base.error);
  line("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2f}%", 100 * ppl_correlation);
  line("Mean ln(PPL(Q)/PPL(base))     : {:10.6f} ± {:10.6f}", ln_ppl_ratio.value, ln_ppl_ratio.error);
  line("Mean PPL(Q)/PPL(base)         : {:10.6f} ± {:10.6f}", ppl_ratio.value, ppl_ratio.error);
  line("Mean PPL(Q)-PPL(base)         : {:10.6f} ± {:10.6f}", ppl_diff.value, ppl_diff.error);
  line("");
  line("====== KL divergence statistics ======");
  line("Mean    KLD: {:10.6f} ± {:10.6f}", kld.value, kld.error);
  line("Maximum KLD: {:10.6f}", kld_q.max);
  line("99.9%   KLD: {:10.6f}", kld_q.p999);
  line("99.0%   KLD: {:10.6f}", kld_q.p99);
  line("95.0%   KLD: {:10.6f}", kld_q.p95);
  line("90.0%   KLD: {:10.6f}", kld_q.p90);
  line("Median  KLD: {:10.6f}", kld_q.median);
  line("10.0%   KLD: {:10.6f}", kld_q.p10);
  line(" 5.0%   KLD: {:10.6f}", kld_q.p05);
  line(" 1.0%   KLD: {:10.6f}", kld_q.p01);
  line("Minimum KLD: {:10.6f}", kld_q.min);
  line("");
  line("====== Token probability statistics ======");
  line("Mean    Δp: {:7.3f} ± {:.3f} %", 100 * delta_p.value, 100 * delta_p.error);
  line("Maximum Δp: {:7.3f}%", 100 * delta_p_q.max);
  line("99.9%   Δp: {:7.3f}%", 100 * delta_p_q.p999);
  line("99.0%   Δp: {:7.3f}%", 100 * delta_p_q.p99);
  line("95.0%   Δp: {:7.3f}%", 100 * delta_p_q.p95);
  line("90.0%   Δp: {:7.3f}%", 100 * delta_p_q.p90);
  line("75.0%   Δp: {:7.3f}%", 100 * delta_p_q.p75);
  line("Median  Δp: {:7.3f}%", 100 * delta_p_q.median);
  line("25.0%   Δp: {:7.3f}%", 100 * delta_p_q.p25);
  line("10.0%   Δp: {:7.3f}%", 100 * delta_p_q.p10);
  line(" 5.0%   Δp: {:7.3f}%", 100 * delta_p_q.p05);
  line(" 1.0%   Δp: {:7.3f}%", 100 * delta_p_q.p01);
  line("Minimum Δp: {:7.3f}%", 100 * delta_p_q.min);
  line("RMS Δp    : {:7.3f} ± {:.3f} %", 100 * rms_delta_p.value, 100 * rms_delta_p.error);
  line("Same top p: {:7.3f} ± {:.3f} %", 100 * same_top.value, 100 * same_top.error);
  return s;
}
double parse_ppl_increase(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return std::runtime_error(fmt::format("bad --max-ppl-increase '{}': {}; write a percentage (5%) or a fraction "
                                          "(0.05)",
                                          text, why));
  };
  std::string s = text;
  const auto trim = [&] {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.erase(s.begin());
  };
  trim();
  const bool percent = !s.empty() && s.back() == '%';
  if (percent) s.pop_back();
  trim();
  if (s.empty()) throw bad("no number");
  // Plain decimal numbers only (std::stod would also take "inf", "nan" and hexadecimal).
  if (s.find_first_not_of("0123456789.eE+-") != std::string::npos) throw bad("not a number");
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw bad("not a number");
  }
  if (used != s.size()) throw bad("not a number");
  if (!std::isfinite(v) || v < 0) throw bad("the limit must be a finite number >= 0");
  if (percent) return v / 100;
  if (v >= 1) throw bad(fmt::format("a bare number is a fraction and {} would allow +{}%", s, v * 100));
  return v;
}

std::vector<std::string> check_quality_gate(const KldStats& s, std::optional<double> max_ppl_increase,
                                            std::optional<double> max_kld) {
  std::vector<std::string> failures;
  // A NaN figure fails the gate (the comparisons are written so that NaN is not "within the limit").
  if (max_ppl_increase && !(s.ppl_increase() <= *max_ppl_increase)) {
    failures.push_back(fmt::format("PPL increase {:.4f}% (PPL {:.4f} vs base {:.4f}) exceeds --max-ppl-increase {:.4g}%",
                                   100 * s.ppl_increase(), s.ppl_model.value, s.ppl_base.value, 100 * *max_ppl_increase));
  }
  if (max_kld && !(s.kld.value <= *max_kld)) {
    failures.push_back(fmt::format("mean KLD {:.6f} exceeds --max-kld {:.6g}", s.kld.value, *max_kld));
  }
  return failures;
}

}  // namespace mixq
