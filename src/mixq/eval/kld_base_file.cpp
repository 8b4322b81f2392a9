#include "mixq/eval/kld_base_file.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "mixq/io/atomic_file.h"

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
class WriterImpl {
 public:
  WriterImpl(const fs::path& out, const TextChunks& chunks, int n_vocab) : file_(out) {
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
  WriterImpl(const WriterImpl&) = delete;
  WriterImpl& operator=(const WriterImpl&) = delete;

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
class ReaderImpl {
 public:
  explicit ReaderImpl(const fs::path& path) : path_(path) {
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
  ReaderImpl(const ReaderImpl&) = delete;
  ReaderImpl& operator=(const ReaderImpl&) = delete;
  ~ReaderImpl() {
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
}  // namespace

struct BaseLogitsWriter::Impl : WriterImpl {
  using WriterImpl::WriterImpl;
};
BaseLogitsWriter::BaseLogitsWriter(const fs::path& out, const TextChunks& chunks, int n_vocab)
    : impl_(std::make_unique<Impl>(out, chunks, n_vocab)) {}
BaseLogitsWriter::~BaseLogitsWriter() = default;
void BaseLogitsWriter::write_chunk(const std::vector<float>& log_probs) { impl_->write_chunk(log_probs); }
void BaseLogitsWriter::finish() { impl_->finish(); }

struct BaseLogitsReader::Impl : ReaderImpl {
  using ReaderImpl::ReaderImpl;
};
BaseLogitsReader::BaseLogitsReader(const fs::path& path) : impl_(std::make_unique<Impl>(path)) {}
BaseLogitsReader::~BaseLogitsReader() = default;
const BaseLogitsInfo& BaseLogitsReader::info() const { return impl_->info(); }
void BaseLogitsReader::read_chunk(int c, std::vector<float>& out) { impl_->read_chunk(c, out); }

BaseLogitsInfo read_base_logits_info(const fs::path& path) { return BaseLogitsReader(path).info(); }

}  // namespace mixq
