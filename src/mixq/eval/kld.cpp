#include "mixq/eval/kld.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "mixq/io/atomic_file.h"
#include "mixq/util/thread_pool.h"

namespace mixq {

static_assert(std::endian::native == std::endian::little, "the base-logits file is little-endian");

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'M', 'I', 'X', 'Q', 'K', 'L', 'D', 'B'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 40;
constexpr uint32_t kFlagBosFirst = 1;

// A 64-bit checksum over 8-byte words (FNV-1a style multiply, then a final mix).
class Checksum {
 public:
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      h_ = (h_ ^ w) * 0x100000001b3ULL;
    }
    for (; i < n; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ULL;
    len_ += n;
  }
  uint64_t value() const {
    uint64_t h = h_ ^ len_;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ULL;
  uint64_t len_ = 0;
};

struct Header {
  char magic[8];
  uint32_t version, n_vocab, n_ctx, n_chunks, first, flags;
  int32_t bos;
  uint32_t reserved;
};
static_assert(sizeof(Header) == kHeaderBytes);

uint64_t row_floats(const Header& h) { return static_cast<uint64_t>(h.n_ctx - 1 - h.first) * h.n_vocab; }

// Bytes the whole file must have (as long double: no overflow for absurd headers).
long double expected_size(const Header& h) {
  const long double tokens = static_cast<long double>(h.n_chunks) * h.n_ctx * 4.0L;
  const long double chunk = static_cast<long double>(row_floats(h)) * 4.0L + 8.0L;
  return static_cast<long double>(kHeaderBytes) + tokens + 8.0L + chunk * h.n_chunks;
}

std::string errno_text() { return std::strerror(errno); }

// Writes a stored base run through an AtomicFile: nothing appears at `out` before finish().
class BaseLogitsWriter {
 public:
  BaseLogitsWriter(const fs::path& out, const TextChunks& chunks, int n_vocab) : file_(out) {
    Header h{};
    std::memcpy(h.magic, kMagic, 8);
    h.version = kVersion;
    h.n_vocab = static_cast<uint32_t>(n_vocab);
    h.n_ctx = static_cast<uint32_t>(chunks.n_ctx);
    h.n_chunks = static_cast<uint32_t>(chunks.n_chunks);
    h.first = static_cast<uint32_t>(chunks.first());
    h.flags = chunks.bos_first ? kFlagBosFirst : 0;
    h.bos = chunks.bos;
    h.reserved = 0;
    Checksum sum;
    sum.add(&h, sizeof h);
    const size_t n_tokens = static_cast<size_t>(chunks.n_chunks) * static_cast<size_t>(chunks.n_ctx);
    sum.add(chunks.tokens.data(), n_tokens * 4);
    const uint64_t check = sum.value();
    file_.write(&h, sizeof h);
    file_.write(chunks.tokens.data(), n_tokens * 4);
    file_.write(&check, 8);
    floats_per_chunk_ = row_floats(h);
    chunks_left_ = chunks.n_chunks;
  }
  BaseLogitsWriter(const BaseLogitsWriter&) = delete;
  BaseLogitsWriter& operator=(const BaseLogitsWriter&) = delete;

  void write_chunk(const std::vector<float>& log_probs) {
    if (log_probs.size() != floats_per_chunk_ || chunks_left_ <= 0) throw std::logic_error("base logits: bad chunk");
    Checksum sum;
    sum.add(log_probs.data(), log_probs.size() * 4);
    const uint64_t check = sum.value();
    file_.write(log_probs.data(), log_probs.size() * 4);
    file_.write(&check, 8);
    --chunks_left_;
  }

  void finish() {
    if (chunks_left_ != 0) throw std::logic_error("base logits: chunks missing");
    file_.commit();
  }

 private:
  AtomicFile file_;
  uint64_t floats_per_chunk_ = 0;
  int chunks_left_ = 0;
};

// Reads a stored base run; the header, the tokens and the file size are checked on opening, each
// chunk's checksum when it is read.
class BaseLogitsReader {
 public:
  explicit BaseLogitsReader(const fs::path& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw std::runtime_error(fmt::format("cannot open base logits '{}': {}", path.string(), errno_text()));
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot open base logits '{}': {}", path.string(), ec.message()));
    if (size < kHeaderBytes) corrupt(fmt::format("truncated: {} bytes, shorter than the {}-byte header", size, kHeaderBytes));
    read(&h_, sizeof h_);
    if (std::memcmp(h_.magic, kMagic, 8) != 0) corrupt("not a mixq base-logits file (bad magic)");
    if (h_.version != kVersion) corrupt(fmt::format("unsupported version {} (this mixq reads version {})", h_.version, kVersion));
    if (h_.n_vocab == 0 || h_.n_vocab > (1u << 24) || h_.n_ctx < 4 || h_.n_ctx > (1u << 24) || h_.n_chunks == 0 ||
        h_.first != h_.n_ctx / 2 || (h_.flags & ~kFlagBosFirst) != 0 || h_.reserved != 0) {
      corrupt(fmt::format("corrupt header (n_vocab {}, n_ctx {}, chunks {}, first {}, flags {})", h_.n_vocab, h_.n_ctx,
                          h_.n_chunks, h_.first, h_.flags));
    }
    const long double want = expected_size(h_);
    if (static_cast<long double>(size) < want) {
      corrupt(fmt::format("truncated or corrupt: {} bytes, but its header ({} chunks of {} tokens, {} vocabulary) needs {:.0f}",
                          size, h_.n_chunks, h_.n_ctx, h_.n_vocab, static_cast<double>(want)));
    }
    if (static_cast<long double>(size) > want) {
      corrupt(fmt::format("corrupt: {} bytes, {:.0f} more than its header describes", size,
                          static_cast<double>(static_cast<long double>(size) - want)));
    }
    info_.n_vocab = static_cast<int>(h_.n_vocab);
    info_.n_ctx = static_cast<int>(h_.n_ctx);
    info_.n_chunks = static_cast<int>(h_.n_chunks);
    info_.bos_first = (h_.flags & kFlagBosFirst) != 0;
    info_.bos = h_.bos;
    info_.tokens.resize(static_cast<size_t>(h_.n_chunks) * h_.n_ctx);
    read(info_.tokens.data(), info_.tokens.size() * 4);
    uint64_t check = 0;
    read(&check, 8);
    Checksum sum;
    sum.add(&h_, sizeof h_);
    sum.add(info_.tokens.data(), info_.tokens.size() * 4);
    if (sum.value() != check) corrupt("corrupt: the header or token checksum does not match");
    for (size_t i = 0; i < info_.tokens.size(); ++i) {
      if (info_.tokens[i] < 0 || info_.tokens[i] >= info_.n_vocab) corrupt(fmt::format("corrupt: token {} is out of range", i));
    }
    data_start_ = static_cast<uint64_t>(kHeaderBytes) + info_.tokens.size() * 4 + 8;
  }
  BaseLogitsReader(const BaseLogitsReader&) = delete;
  BaseLogitsReader& operator=(const BaseLogitsReader&) = delete;
  ~BaseLogitsReader() {
    if (f_) std::fclose(f_);
  }

  const BaseLogitsInfo& info() const { return info_; }

  void read_chunk(int c, std::vector<float>& out) {
    const uint64_t n = row_floats(h_);
    out.resize(n);
    const uint64_t offset = data_start_ + static_cast<uint64_t>(c) * (n * 4 + 8);
    if (::fseeko(f_, static_cast<off_t>(offset), SEEK_SET) != 0) corrupt(fmt::format("cannot seek: {}", errno_text()));
    read(out.data(), n * 4);
    uint64_t check = 0;
    read(&check, 8);
    Checksum sum;
    sum.add(out.data(), n * 4);
    if (sum.value() != check) corrupt(fmt::format("corrupt: chunk {} does not match its checksum", c));
  }

 private:
  void read(void* p, size_t n) {
    if (n && std::fread(p, 1, n, f_) != n) {
      corrupt(std::ferror(f_) ? fmt::format("read error: {}", errno_text()) : std::string("truncated: unexpected end of file"));
    }
  }
  [[noreturn]] void corrupt(const std::string& what) const {
    throw std::runtime_error(fmt::format("base logits '{}': {}", path_.string(), what));
  }

  fs::path path_;
  std::FILE* f_ = nullptr;
  Header h_{};
  BaseLogitsInfo info_;
  uint64_t data_start_ = 0;
};

int first_max(const float* x, int n) {
  int best = 0;
  for (int v = 1; v < n; ++v) {
    if (x[v] > x[best]) best = v;
  }
  return best;
}

// log sum_v exp(x[v]) of float log-probabilities (about 0: they are already normalized).
double log_norm(const float* x, int n) {
  double s = 0;
  for (int v = 0; v < n; ++v) s += std::exp(static_cast<double>(x[v]));
  return std::log(s);
}

struct RowResult {
  double kld, nll_base, nll_model, delta_p;
  bool same_top;
};

// The statistics of chunks: float32 log-probabilities of a chunk's rows (both sides), compared in
// double with the rows spread over a pool of threads.
class Comparer {
 public:
  explicit Comparer(int threads) : pool_(threads) {}

  // out (rows x n_vocab) = the float32 log-softmax of the chunk's logits; `who` names the model in errors.
  void log_probs(const ChunkLogits& c, std::vector<float>& out, const char* who) {
    out.resize(static_cast<size_t>(c.rows) * static_cast<size_t>(c.n_vocab));
    pool_.parallel_for(c.rows, [&](int64_t i) {
      LogSoftmax(c.row(static_cast<int>(i)), c.n_vocab).all(out.data() + static_cast<size_t>(i) * c.n_vocab);
    });
    check_finite(c, out, who);
  }

  // Appends the chunk's per-token values: base_lp from log_probs() (or a stored run), the model's chunk.
  void compare(const std::vector<float>& base_lp, const ChunkLogits& m, KldTokens& out) {
    log_probs(m, model_lp_, "the model");
    std::vector<RowResult> rows(static_cast<size_t>(m.rows));
    const int n = m.n_vocab;
    pool_.parallel_for(m.rows, [&](int64_t i) {
      const float* b = base_lp.data() + static_cast<size_t>(i) * n;
      const float* q = model_lp_.data() + static_cast<size_t>(i) * n;
      // KL = sum_v pb(v) (lb(v) - lq(v)) with both sides renormalized in double:
      // pb = exp(b) / sb, lb = b - log sb, lq = q - log sq  =>  KL = sum exp(b)(b - q) / sb - log sb + log sq.
      double sb = 0, s = 0;
      for (int v = 0; v < n; ++v) {
        const double bv = b[v];
        const double e = std::exp(bv);
        sb += e;
        s += e * (bv - static_cast<double>(q[v]));
      }
      const double lsb = std::log(sb), lsq = log_norm(q, n);
      const int32_t t = m.targets[i];
      RowResult& r = rows[static_cast<size_t>(i)];
      r.kld = s / sb - lsb + lsq;
      r.nll_base = -(static_cast<double>(b[t]) - lsb);
      r.nll_model = -(static_cast<double>(q[t]) - lsq);
      r.delta_p = std::exp(-r.nll_model) - std::exp(-r.nll_base);
      r.same_top = first_max(b, n) == first_max(q, n);
      if (!std::isfinite(sb) || std::abs(sb - 1) > 1e-3) bad_base_row_ = static_cast<int>(i);
    });
    if (bad_base_row_ >= 0) {
      const int row = bad_base_row_;
      bad_base_row_ = -1;
      throw std::runtime_error(fmt::format("the base log-probabilities of chunk {}, row {} are not a distribution "
                                           "(corrupt base logits?)",
                                           m.chunk, row));
    }
    for (const RowResult& r : rows) {
      out.kld.push_back(r.kld);
      out.nll_base.push_back(r.nll_base);
      out.nll_model.push_back(r.nll_model);
      out.delta_p.push_back(r.delta_p);
      out.same_top.push_back(r.same_top ? 1 : 0);
    }
  }

 private:
  static void check_finite(const ChunkLogits& c, const std::vector<float>& lp, const char* who) {
    for (size_t i = 0; i < lp.size(); ++i) {
      if (!std::isfinite(lp[i])) {
        throw std::runtime_error(fmt::format("{} produced logits that are not finite (chunk {}, scored row {})", who,
                                             c.chunk, i / static_cast<size_t>(c.n_vocab)));
      }
    }
  }

  ThreadPool pool_;
  std::vector<float> model_lp_;
  std::atomic<int> bad_base_row_{-1};
};

// Running figures for the progress callback.
struct Running {
  double kld = 0, nll_base = 0, nll_model = 0;
  size_t seen = 0;
  void add(const KldTokens& t) {
    for (; seen < t.size(); ++seen) {
      kld += t.kld[seen];
      nll_base += t.nll_base[seen];
      nll_model += t.nll_model[seen];
    }
  }
  KldProgress progress(int done, int total) const {
    const double n = static_cast<double>(std::max<size_t>(seen, 1));
    return {done, total, kld / n, std::exp(nll_base / n), std::exp(nll_model / n)};
  }
};

void check_cancel(const KldOptions& opts) {
  if (opts.cancel && opts.cancel->load()) throw KldCancelled();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void check_same_tokens(const std::vector<int32_t>& a, const std::vector<int32_t>& b, size_t n, const char* what_a,
                       const char* what_b, const std::string& advice) {
  for (size_t i = 0; i < n; ++i) {
    if (i >= a.size() || i >= b.size() || a[i] != b[i]) {
      throw std::runtime_error(fmt::format("{} and {} differ at token {} ({} vs {}): {}", what_a, what_b, i,
                                           i < a.size() ? std::to_string(a[i]) : "end of text",
                                           i < b.size() ? std::to_string(b[i]) : "end of text", advice));
    }
  }
}

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
  s.ppl_base = {std::exp(mb.mean), std::exp(mb.mean) * std_error(mb.var, n)};
  s.ppl_model = {std::exp(mm.mean), std::exp(mm.mean) * std_error(mm.var, n)};
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

void check_same_vocabulary(const Tokenizer& base, int base_n_vocab, const Tokenizer& model, int model_n_vocab) {
  const auto differ = [](const std::string& what) {
    return std::runtime_error("the base and the model have different vocabularies (" + what +
                              "): KL divergence compares distributions over the same tokens");
  };
  if (base_n_vocab != model_n_vocab) {
    throw differ(fmt::format("the base outputs {} logits per token, the model {}", base_n_vocab, model_n_vocab));
  }
  if (base.size() != model.size()) {
    throw differ(fmt::format("the base has {} tokens, the model {}", base.size(), model.size()));
  }
  if (base.model() != model.model()) throw differ(fmt::format("tokenizer '{}' vs '{}'", base.model(), model.model()));
  if (base.bos() != model.bos() || base.add_bos_token() != model.add_bos_token()) throw differ("BOS handling differs");
  for (size_t id = 0; id < base.size(); ++id) {
    const auto i = static_cast<int32_t>(id);
    if (base.decode_token(i) != model.decode_token(i)) {
      throw differ(fmt::format("token {} is '{}' in the base, '{}' in the model", id, base.decode_token(i),
                               model.decode_token(i)));
    }
  }
}

KldResult kl_divergence(const Model& base, const Tokenizer& base_tok, const Model& model,
                        const Tokenizer& tok, const std::string& text, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  check_same_vocabulary(base_tok, base.n_vocab(), tok, model.n_vocab());
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  const size_t n_used = static_cast<size_t>(chunks.n_chunks) * static_cast<size_t>(chunks.n_ctx);
  check_same_tokens(base_tok.encode(text, true), chunks.tokens, n_used, "the base's tokens", "the model's tokens",
                    "the tokenizers differ, so the models' vocabularies are not the same");
  std::optional<BaseLogitsWriter> writer;
  if (!opts.save_base.empty()) writer.emplace(opts.save_base, chunks, base.n_vocab());
  ChunkRunner base_runner(base, chunks, opts.threads, opts.attention);
  Comparer cmp(opts.threads);
  KldResult r;
  Running running;
  std::vector<float> base_lp;
  run_chunks(model, chunks, opts.threads, [&](const ChunkLogits& m) {
    cmp.log_probs(base_runner.run(m.chunk), base_lp, "the base");
    if (writer) writer->write_chunk(base_lp);
    cmp.compare(base_lp, m, r.tokens);
    running.add(r.tokens);
    if (opts.on_chunk) opts.on_chunk(running.progress(m.chunk + 1, chunks.n_chunks));
    check_cancel(opts);
  }, opts.attention);
  if (writer) writer->finish();
  r.stats = summarize(r.tokens, chunks.n_chunks, chunks.n_ctx);
  r.seconds = seconds_since(start);
  return r;
}

BaseLogitsInfo read_base_logits_info(const fs::path& path) { return BaseLogitsReader(path).info(); }

KldResult kl_divergence_from_file(const fs::path& base_logits, const Model& model, const Tokenizer& tok,
                                  const std::string& text, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  BaseLogitsReader reader(base_logits);
  const BaseLogitsInfo& info = reader.info();
  const std::string where = fmt::format("the base logits '{}'", base_logits.string());
  if (info.n_vocab != model.n_vocab()) {
    throw std::runtime_error(fmt::format("{} are over a vocabulary of {} tokens, the model has {}: the vocabularies "
                                         "differ",
                                         where, info.n_vocab, model.n_vocab()));
  }
  if (info.bos_first != tok.add_bos_token() || (info.bos_first && info.bos != tok.bos())) {
    throw std::runtime_error(fmt::format("{} were made with another BOS handling than the model's vocabulary: the "
                                         "vocabularies differ",
                                         where));
  }
  int n_chunks = info.n_chunks;
  if (opts.max_chunks > 0) {
    if (opts.max_chunks > info.n_chunks) {
      throw std::runtime_error(
          fmt::format("{} hold {} chunks; --chunks {} asks for more", where, info.n_chunks, opts.max_chunks));
    }
    n_chunks = opts.max_chunks;
  }
  const TextChunks chunks = split_text(tok, text, info.n_ctx, n_chunks);
  if (chunks.n_chunks < n_chunks) {
    throw std::runtime_error(fmt::format("the text has {} chunks of {} tokens, {} hold {}: use the same text", chunks.n_chunks,
                                         info.n_ctx, where, n_chunks));
  }
  const size_t n_used = static_cast<size_t>(n_chunks) * static_cast<size_t>(info.n_ctx);
  check_same_tokens(info.tokens, chunks.tokens, n_used, "the stored tokens", "the text's tokens",
                    "use the same text (-f) and a model with the same vocabulary as the base");
  Comparer cmp(opts.threads);
  KldResult r;
  Running running;
  std::vector<float> base_lp;
  run_chunks(model, chunks, opts.threads, [&](const ChunkLogits& m) {
    reader.read_chunk(m.chunk, base_lp);
    cmp.compare(base_lp, m, r.tokens);
    running.add(r.tokens);
    if (opts.on_chunk) opts.on_chunk(running.progress(m.chunk + 1, chunks.n_chunks));
    check_cancel(opts);
  }, opts.attention);
  r.stats = summarize(r.tokens, chunks.n_chunks, chunks.n_ctx);
  r.seconds = seconds_since(start);
  return r;
}

PerplexityResult save_base_logits(const Model& base, const Tokenizer& tok, const std::string& text,
                                  const fs::path& out, const KldOptions& opts) {
  const auto start = std::chrono::steady_clock::now();
  const TextChunks chunks = split_text(tok, text, opts.n_ctx, opts.max_chunks);
  BaseLogitsWriter writer(out, chunks, base.n_vocab());
  Comparer cmp(opts.threads);
  std::vector<float> base_lp;
  // The NLLs as a comparison computes them (renormalized float32 log-probabilities), so this PPL is
  // exactly the PPL(base) that a later comparison against the file reports.
  std::vector<double> nll;
  double nll_sum = 0;
  run_chunks(base, chunks, opts.threads, [&](const ChunkLogits& b) {
    cmp.log_probs(b, base_lp, "the base");
    writer.write_chunk(base_lp);
    for (int i = 0; i < b.rows; ++i) {
      const float* row = base_lp.data() + static_cast<size_t>(i) * b.n_vocab;
      nll.push_back(-(static_cast<double>(row[b.targets[i]]) - log_norm(row, b.n_vocab)));
      nll_sum += nll.back();
    }
    if (opts.on_chunk) opts.on_chunk({b.chunk + 1, chunks.n_chunks, 0, std::exp(nll_sum / static_cast<double>(nll.size())), 0});
    check_cancel(opts);
  }, opts.attention);
  writer.finish();
  const Moments m = moments(nll);
  PerplexityResult r;
  r.chunks = chunks.n_chunks;
  r.scored_tokens = static_cast<int64_t>(nll.size());
  r.ppl = std::exp(m.mean);
  r.ppl_error = r.ppl * std_error(m.var, nll.size());
  r.seconds = seconds_since(start);
  return r;
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
