#include "mixq/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

namespace mixq {

namespace {

// Layout tags of every live mapping's rewritten ranges, by first byte (addresses are unique among
// live mappings; a mapping removes its own on release).
struct Layouts {
  std::shared_mutex mu;
  std::unordered_map<uintptr_t, uint8_t> by_start;
  std::atomic<size_t> count{0};  // lookups skip the lock while nothing was rewritten
};
Layouts& layouts() {
  static Layouts* l = new Layouts;  // never destroyed: a mapping may outlive static destruction
  return *l;
}

// MADV_POPULATE_WRITE (Linux 5.14), spelled out for older headers.
#ifdef MADV_POPULATE_WRITE
constexpr int kPopulateWrite = MADV_POPULATE_WRITE;
#else
constexpr int kPopulateWrite = 23;
#endif

uintptr_t page_size() { return static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE)); }

}  // namespace

void populate_for_writing(void* p, size_t n) {
  const uintptr_t page = page_size(), begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = begin / page * page, last = (begin + n + page - 1) / page * page;
  if (n > 0) ::madvise(reinterpret_cast<void*>(first), last - first, kPopulateWrite);
}

MappedFile::MappedFile(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw std::runtime_error(fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    ::close(fd);
    throw std::runtime_error(fmt::format("cannot read '{}': {}", path.string(),
                                         err ? std::strerror(err) : "not a regular file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("cannot map '{}': {}", path.string(), std::strerror(err)));
    }
    data_ = static_cast<const uint8_t*>(p);
    fd_ = fd;
    return;
  }
  ::close(fd);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)), rewritten_(std::exchange(other.rewritten_, {})) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
    rewritten_ = std::exchange(other.rewritten_, {});
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::drop_pages(const void* p, size_t n) const {
  const uintptr_t page = page_size();
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (begin + page - 1) / page * page;  // only whole pages inside the range
  const uintptr_t last = (begin + n) / page * page;
  if (!data_ || last <= first) return;
  for (const auto& [b, e] : rewritten_) {
    if (b < last + page && e + page > first) return;  // a rewritten range's pages stay
  }
  ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

bool MappedFile::rewrite(const void* p, size_t n, uint8_t layout, const std::function<void(uint8_t*)>& fn) {
  const auto begin = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(data_);
  if (data_ == nullptr || begin < base || begin + n > base + size_ || layout == 0) {
    throw std::invalid_argument("MappedFile::rewrite: the range is not inside the mapping");
  }
  // One rewrite at a time, process-wide (they happen at load): the check and the rewrite are one.
  Layouts& l = layouts();
  const std::unique_lock lock(l.mu);
  if (l.by_start.contains(begin)) return false;
  const uintptr_t page = page_size(), first = begin / page * page, last = (begin + n + page - 1) / page * page;
  if (::mprotect(reinterpret_cast<void*>(first), last - first, PROT_READ | PROT_WRITE) != 0) {
    throw std::runtime_error(fmt::format("cannot make mapped pages writable: {}", std::strerror(errno)));
  }
  try {
    fn(reinterpret_cast<uint8_t*>(begin));
  } catch (...) {
    ::mprotect(reinterpret_cast<void*>(first), last - first, PROT_READ);
    throw;
  }
  ::mprotect(reinterpret_cast<void*>(first), last - first, PROT_READ);
  rewritten_.emplace_back(begin, begin + n);
  l.by_start[begin] = layout;
  l.count = l.by_start.size();
  return true;
}

uint8_t MappedFile::layout_at(const void* p) {
  Layouts& l = layouts();
  if (l.count.load(std::memory_order_relaxed) == 0) return 0;
  const std::shared_lock lock(l.mu);
  const auto it = l.by_start.find(reinterpret_cast<uintptr_t>(p));
  return it == l.by_start.end() ? 0 : it->second;
}

void MappedFile::release() {
  if (!rewritten_.empty()) {
    Layouts& l = layouts();
    const std::unique_lock lock(l.mu);
    for (const auto& r : rewritten_) l.by_start.erase(r.first);
    l.count = l.by_start.size();
  }
  rewritten_.clear();
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

void MappedFile::copy_out(const void* p, size_t n, void* dst) const {
  const auto begin = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(data_);
  bool from_file = fd_ >= 0 && data_ != nullptr && begin >= base && begin - base <= size_ && n <= size_ - (begin - base);
  for (const auto& [b, e] : rewritten_) {
    if (b < begin + n && e > begin) from_file = false;
  }
  auto* out = static_cast<uint8_t*>(dst);
  size_t done = 0;
  while (from_file && done < n) {
    const ssize_t r = ::pread(fd_, out + done, n - done, static_cast<off_t>(begin - base + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;  // the rest through the mapping, as any reader of it would see it
    done += static_cast<size_t>(r);
  }
  if (done < n) std::memcpy(out + done, static_cast<const uint8_t*>(p) + done, n - done);
}

}  // namespace mixq
