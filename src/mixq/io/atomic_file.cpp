#include "mixq/io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>

namespace mixq {

namespace fs = std::filesystem;

namespace {

// The write buffer: 4 MB (the GGUF writer's slices), aligned for direct I/O. 4096 covers the
// logical block size of every common disk. Direct mode fills a ring of kRing of them: the quantizer
// produces in bursts (a slice after each parallel loop) and the disk writes steadily, so two
// buffers left the disk idle between bursts and the quantizer waiting on it within them.
constexpr size_t kDirectAlign = 4096;
constexpr size_t kBufferBytes = size_t{4} << 20;
constexpr size_t kRing = 4;

// Writes all `size` bytes to fd; 0 or the errno of the failure. A write refused with EINVAL while
// O_DIRECT is set (an alignment the file system needs beyond ours) continues through the page
// cache: only whole aligned buffers were written directly before it, so the file's end is where
// the buffered writes go on.
int write_fully(int fd, const char* p, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, p + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) {
        const int flags = ::fcntl(fd, F_GETFL);
        if (flags >= 0 && (flags & O_DIRECT) && ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) == 0) continue;
      }
      return errno;
    }
    if (n == 0) return EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

// The registry lives in static storage and is read by a signal handler, so it holds plain
// character arrays and atomics only: no allocation, no locks.
constexpr int kSlots = 256;
enum SlotState : int { kFree = 0, kFilling = 1, kLive = 2 };
struct Slot {
  std::atomic<int> state{kFree};
  char path[PATH_MAX];
};
Slot g_slots[kSlots];

int register_path(const fs::path& p) {
  const std::string& s = p.native();
  if (s.size() >= PATH_MAX) throw std::runtime_error(fmt::format("cannot write '{}': the path is too long", s));
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (g_slots[i].state.compare_exchange_strong(expected, kFilling)) {
      std::memcpy(g_slots[i].path, s.c_str(), s.size() + 1);
      g_slots[i].state.store(kLive);
      return i;
    }
  }
  throw std::runtime_error(fmt::format("cannot write '{}': more than {} temporary files are open", s, kSlots));
}

void unregister_path(int slot) {
  if (slot >= 0) g_slots[slot].state.store(kFree);
}

extern "C" void remove_temporaries_and_exit(int sig) {
  for (auto& slot : g_slots) {
    if (slot.state.load() == kLive) ::unlink(slot.path);
  }
  static const char msg[] = "\nmixq: interrupted: no output was written\n";
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  ::_exit(128 + sig);
}

std::atomic<uint64_t> g_counter{0};

// `.NAME.mixq-tmp-PID-N`: hidden, beside the target, unique within this process; the PID lets a
// later run tell a dead process's leftovers from a running one's.
fs::path temporary_name(const fs::path& target, std::string_view suffix) {
  std::string name = target.filename().string();
  // Leave room in NAME_MAX (255) for the decoration.
  if (name.size() > 160) name.resize(160);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  return dir / fmt::format(".{}.mixq-tmp-{}-{}{}", name, ::getpid(), g_counter.fetch_add(1), suffix);
}

std::string errno_hint(int err) {
  if (err == ENOSPC) return " (the disk is full: free space or choose another output path)";
  if (err == EDQUOT) return " (the disk quota is exhausted: free space or choose another output path)";
  if (err == EFBIG) return " (the file is larger than this system allows: choose another output path)";
  if (err == ENOENT) return " (the directory does not exist: create it or choose another output path)";
  if (err == EACCES || err == EPERM || err == EROFS) return " (choose a writable output path)";
  return "";
}

// Follows a chain of symlinks to the path it ends at, which may not exist (a dangling link
// names the file to create).
fs::path resolve_links(const fs::path& requested) {
  fs::path p = requested;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::error_code ec;
    const fs::path next = fs::read_symlink(p, ec);
    if (ec) return p;
    p = next.is_absolute() ? next : p.parent_path() / next;
  }
  throw std::runtime_error(fmt::format("cannot write '{}': too many levels of symbolic links", requested.string()));
}

}  // namespace

OutputKind output_kind_of_mode(mode_t mode) {
  if (S_ISREG(mode)) return OutputKind::Replace;
  if (S_ISCHR(mode) || S_ISFIFO(mode)) return OutputKind::WriteThrough;
  return OutputKind::Refuse;
}

OutputTarget classify_output(const fs::path& requested) {
  struct stat st;
  if (::stat(requested.c_str(), &st) == 0) {
    const OutputKind kind = output_kind_of_mode(st.st_mode);
    if (kind == OutputKind::WriteThrough) return {kind, requested, {}};
    if (kind == OutputKind::Refuse) {
      const char* what = S_ISDIR(st.st_mode)   ? "a directory"
                         : S_ISBLK(st.st_mode) ? "a block device"
                         : S_ISSOCK(st.st_mode) ? "a socket"
                                                : "not a regular file";
      return {kind, requested, what};
    }
    // A regular file, possibly through links: replace the file, keep the links.
    std::error_code ec;
    fs::path real = fs::canonical(requested, ec);
    return {kind, ec ? resolve_links(requested) : real, {}};
  }
  return {OutputKind::Replace, resolve_links(requested), {}};
}

// The writer thread of direct mode: writes the buffers handed over, in order. The caller fills
// the ring's next buffer while up to kRing - 1 earlier ones wait or are written, and waits only when
// that buffer itself is still queued (the disk is slower than the caller, or a write stalls). A
// failed write is kept (errno) and reported by the caller at its next hand-over or at commit.
struct AtomicFile::Writer {
  explicit Writer(int fd) : fd(fd), thread([this] { run(); }) {}
  ~Writer() {
    {
      std::lock_guard lock(m);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
  // Waits until at most `outstanding` buffers are queued or being written; returns the errno of a
  // failed write (0: none).
  int wait_below(size_t outstanding) {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return queue.size() <= outstanding; });
    return err;
  }
  void hand_over(const char* p, size_t n) {
    {
      std::lock_guard lock(m);
      queue.emplace_back(p, n);
    }
    cv.notify_all();
  }
  void run() {
    std::unique_lock lock(m);
    for (;;) {
      cv.wait(lock, [&] { return !queue.empty() || stop; });
      if (queue.empty()) return;
      const auto [p, size] = queue.front();
      lock.unlock();
      const int e = err != 0 ? 0 : write_fully(fd, p, size);  // after a failure the file is lost
      lock.lock();
      if (e != 0) err = e;
      queue.pop_front();  // only now is its buffer free again
      cv.notify_all();
    }
  }

  int fd;
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::pair<const char*, size_t>> queue;  // the front one is being written
  int err = 0;
  bool stop = false;
  std::thread thread;  // last: starts once the members above exist
};

void AtomicFile::WriterDeleter::operator()(Writer* w) const { delete w; }

AtomicFile::AtomicFile(const fs::path& target) : requested_(target) {
  const OutputTarget t = classify_output(target);
  target_ = t.path;
  if (t.kind == OutputKind::Refuse) {
    throw std::runtime_error(fmt::format("cannot write '{}': it is {}; give a file path", target.string(), t.why));
  }
  if (t.kind == OutputKind::WriteThrough) {
    through_ = true;
    writing_ = target_;
    // O_TRUNC is meaningless for devices and FIFOs; no O_CREAT: it exists.
    fd_ = ::open(writing_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) fail("cannot open it for writing", errno);
  } else {
    for (int attempt = 0;; ++attempt) {
      writing_ = temporary_name(target_, "");
      // The slot is taken first, so no moment exists where the file is there but unknown to
      // the interrupt handler.
      slot_ = register_path(writing_);
      fd_ = ::open(writing_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
      if (fd_ >= 0) break;
      const int err = errno;
      unregister_path(slot_);
      slot_ = -1;
      if (err != EEXIST || attempt > 100) fail("cannot create the temporary file " + writing_.string(), err);
    }
  }
  // Direct I/O for the temporary file where the file system takes it (not for devices and FIFOs).
  if (!through_) {
    const int flags = ::fcntl(fd_, F_GETFL);
    direct_ = flags >= 0 && ::fcntl(fd_, F_SETFL, flags | O_DIRECT) == 0;
  }
  storage_ = {static_cast<char*>(std::aligned_alloc(kDirectAlign, (direct_ ? kRing : 1) * kBufferBytes)), std::free};
  if (!storage_) fail("out of memory for its write buffer", ENOMEM);
  buffer_ = storage_.get();
  if (direct_) {
    try {
      writer_.reset(new Writer(fd_));
    } catch (const std::system_error&) {
      // No thread to be had: the caller writes each buffer itself.
    }
  }
}

// Waits for the writer's last buffer and ends the thread; a failed write fails the file.
void AtomicFile::drain() {
  if (!writer_) return;
  const int err = writer_->wait_below(0);
  writer_.reset();
  if (err != 0) fail("write failed", err);
}

void AtomicFile::stop_direct() {
  if (!direct_) return;
  direct_ = false;
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags < 0 || ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT) != 0) fail("cannot switch off direct I/O", errno);
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  writer_.reset();  // before the descriptor closes: the writer may be writing to it
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!through_ && slot_ >= 0) ::unlink(writing_.c_str());
  unregister_path(slot_);
  slot_ = -1;
}

void AtomicFile::fail(const std::string& what, int err) {
  const std::string msg = fmt::format("cannot write '{}': {}: {}{}", requested_.string(), what, std::strerror(err),
                                      errno_hint(err));
  discard();
  committed_ = true;  // nothing left to clean up
  throw std::runtime_error(msg);
}

void AtomicFile::write_all(const char* p, size_t size) {
  if (const int err = write_fully(fd_, p, size); err != 0) fail("write failed", err);
}

bool AtomicFile::writes_directly() const {
  if (fd_ < 0) return false;
  const int flags = ::fcntl(fd_, F_GETFL);
  return flags >= 0 && (flags & O_DIRECT) != 0;
}

void AtomicFile::flush_buffer() {
  if (writer_ && used_ > 0) {
    // Hand this buffer over and fill the ring's next one once the writer is done with it.
    writer_->hand_over(buffer_, used_);
    buffer_ += kBufferBytes;
    if (buffer_ == storage_.get() + kRing * kBufferBytes) buffer_ = storage_.get();
    if (const int err = writer_->wait_below(kRing - 1); err != 0) fail("write failed", err);
    used_ = 0;
    return;
  }
  write_all(buffer_, used_);
  used_ = 0;
}

void AtomicFile::write(const void* data, size_t n) {
  if (committed_ || fd_ < 0) throw std::logic_error("AtomicFile: write after commit");
  const char* p = static_cast<const char*>(data);
  // Without direct I/O, a span at least as large as the buffer goes to the file straight from
  // the caller's memory (after what is buffered). With it, everything passes the aligned buffer,
  // which is written whole (kBufferBytes, a multiple of the alignment, at aligned offsets).
  if (!direct_ && n >= kBufferBytes) {
    flush_buffer();
    write_all(p, n);
    return;
  }
  while (n > 0) {
    const size_t take = std::min(n, kBufferBytes - used_);
    std::memcpy(buffer_ + used_, p, take);
    used_ += take;
    p += take;
    n -= take;
    if (used_ == kBufferBytes) flush_buffer();
  }
}

void AtomicFile::commit() {
  if (committed_ || fd_ < 0) throw std::logic_error("AtomicFile: commit twice");
  // The last partial block goes through the page cache (direct writes are whole blocks).
  drain();
  stop_direct();
  flush_buffer();
  if (!through_ && ::fsync(fd_) != 0) fail("sync failed", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close failed", errno);
  if (through_) {
    committed_ = true;
    return;
  }
  if (::rename(writing_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    fail("cannot move the finished file into place at " + target_.string(), err);
  }
  // After the rename the temporary name is gone; the handler may still try it, harmlessly.
  unregister_path(slot_);
  slot_ = -1;
  committed_ = true;
  // The rename is durable only once the directory is.
  const fs::path dir = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    const int rc = ::fsync(dfd);
    const int err = errno;
    ::close(dfd);
    if (rc != 0 && err != EINVAL && err != EROFS) {
      throw std::runtime_error(fmt::format("cannot write '{}': syncing the directory failed: {}", requested_.string(),
                                           std::strerror(err)));
    }
  }
}

void write_file_atomically(const fs::path& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

TemporaryPath::TemporaryPath(const fs::path& near, std::string_view suffix) {
  const OutputTarget t = classify_output(near);
  // Beside /dev/null or a FIFO there is no place for a file: use the temporary directory.
  path_ = temporary_name(t.kind == OutputKind::Replace ? t.path : fs::temp_directory_path() / t.path.filename(), suffix);
  slot_ = register_path(path_);
}

TemporaryPath::~TemporaryPath() {
  ::unlink(path_.c_str());
  unregister_path(slot_);
}

void install_interrupt_cleanup() {
  struct sigaction sa {};
  sa.sa_handler = remove_temporaries_and_exit;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&sa.sa_mask, sig);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

size_t live_temporary_count() {
  size_t n = 0;
  for (const auto& slot : g_slots) n += slot.state.load() == kLive;
  return n;
}

std::vector<StaleTemporary> find_stale_temporaries(const fs::path& target) {
  std::vector<StaleTemporary> out;
  const fs::path resolved = classify_output(target).path;
  const fs::path dir = resolved.has_parent_path() ? resolved.parent_path() : fs::path(".");
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return out;
  for (const auto& e : it) {
    const std::string name = e.path().filename().string();
    // The current scheme and the two older ones (`OUT.mixq-tmp-PID`, `OUT.mixq-src-PID.gguf`).
    size_t at = std::string::npos;
    for (const char* tag : {".mixq-tmp-", ".mixq-src-"}) {
      if (const size_t p = name.rfind(tag); p != std::string::npos) {
        at = p + std::strlen(tag);
        break;
      }
    }
    if (at == std::string::npos || at >= name.size() || !std::isdigit(static_cast<unsigned char>(name[at]))) continue;
    int64_t pid = 0;
    size_t i = at;
    for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) && pid < (int64_t{1} << 40); ++i) {
      pid = pid * 10 + (name[i] - '0');
    }
    if (pid <= 0 || pid > INT_MAX) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
    struct stat st;
    if (::lstat(e.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    out.push_back({e.path(), pid, static_cast<uint64_t>(st.st_size)});
  }
  return out;
}

void check_distinct_files(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs) {
  struct Id {
    dev_t dev;
    ino_t ino;
    const NamedPath* named;
    std::string file;
  };
  auto regular_id = [](const fs::path& p, struct stat& st) {
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  };
  std::vector<Id> ins;
  for (const auto& in : inputs) {
    if (in.path.empty()) continue;
    struct stat st;
    if (regular_id(in.path, st)) {
      ins.push_back({st.st_dev, st.st_ino, &in, {}});
    } else if (::stat(in.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(in.path, ec)) {
        struct stat est;
        if (regular_id(e.path(), est)) ins.push_back({est.st_dev, est.st_ino, &in, e.path().filename().string()});
      }
    }
  }
  std::vector<Id> outs;
  std::vector<std::pair<fs::path, const NamedPath*>> absent;
  for (const auto& out : outputs) {
    if (out.path.empty()) continue;
    struct stat st;
    if (!regular_id(out.path, st)) {
      // Not there yet: two outputs naming one new file still collide.
      if (::stat(out.path.c_str(), &st) != 0) {
        std::error_code ec;
        fs::path p = fs::weakly_canonical(fs::absolute(out.path), ec);
        if (ec) continue;
        for (const auto& [q, named] : absent) {
          if (q == p) {
            throw std::runtime_error(fmt::format("{} '{}' and {} '{}' are the same file: give each output its own path",
                                                 named->label, named->path.string(), out.label, out.path.string()));
          }
        }
        absent.emplace_back(std::move(p), &out);
      }
      continue;  // absent, or written through (device, FIFO)
    }
    for (const auto& in : ins) {
      if (in.dev == st.st_dev && in.ino == st.st_ino) {
        throw std::runtime_error(fmt::format(
            "{} '{}' is the same file as {} '{}'{}: writing it would destroy the input before it is read; "
            "choose another output path",
            out.label, out.path.string(), in.named->label, in.named->path.string(),
            in.file.empty() ? std::string() : fmt::format(" (its file {})", in.file)));
      }
    }
    for (const auto& o : outs) {
      if (o.dev == st.st_dev && o.ino == st.st_ino) {
        throw std::runtime_error(fmt::format("{} '{}' and {} '{}' are the same file: give each output its own path",
                                             o.named->label, o.named->path.string(), out.label, out.path.string()));
      }
    }
    outs.push_back({st.st_dev, st.st_ino, &out, {}});
  }
}

}  // namespace mixq
