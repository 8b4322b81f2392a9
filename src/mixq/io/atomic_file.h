// The one way mixq writes a file. Every output (models, importance matrices, measurements, plans,
// reports, stored KLD bases) goes through AtomicFile, so these rules hold everywhere:
//
//  * A regular (or absent) target is written to a temporary file beside it, named
//    `.NAME.mixq-tmp-PID-N` and created with O_EXCL (never shared, never through a planted link),
//    then flushed, fsync'ed, closed (checked), renamed over the target, and the directory fsync'ed.
//    Readers see the old file or the complete new one, never a part.
//  * The temporary file is written with direct I/O (O_DIRECT, whole aligned blocks from an aligned
//    buffer) where its file system takes it, the last partial block without: the data has to
//    reach the disk before the rename anyway, and copying it into the page cache first cost more
//    CPU than quantizing a Q8_0 model (docs/BENCHMARKS.md). A writer thread writes one buffer
//    while the caller fills the other, so the caller does not wait for the disk. Where O_DIRECT
//    is refused (tmpfs, some network file systems) the same bytes go through the page cache.
//  * A symlink target is followed to the file it names; the link itself stays.
//  * A target that exists and is a character device or a FIFO (/dev/null, a pipe) is written
//    through: there is nothing to replace, and replacing it would destroy it. Directories, sockets
//    and block devices are refused.
//  * Live temporary files are kept in a registry that the SIGINT / SIGTERM / SIGHUP handler
//    (install_interrupt_cleanup) empties before the process exits, so an interruption leaves
//    nothing behind; any other exit path removes them in destructors.
//  * Temporary files of processes that died without cleaning up (SIGKILL, power loss) are found
//    by find_stale_temporaries and removed only on request.
//
// check_distinct_files is the same-file guard the commands run before any work: no output may be
// one of the inputs (same device and inode: a path, a symlink or a hard link) or another output.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mixq {

class AtomicFile {
 public:
  // Opens the temporary file (or the write-through target). Throws std::runtime_error
  // "cannot write 'TARGET': ..." when the target is refused or cannot be created.
  explicit AtomicFile(const std::filesystem::path& target);
  // Without a successful commit(), the temporary file is removed.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flushes, syncs, closes and renames into place; every step is checked and throws on failure
  // (the temporary file is removed then).
  void commit();

  const std::filesystem::path& target() const { return target_; }
  // The file being written: the temporary file, or the target when written through.
  const std::filesystem::path& writing_path() const { return writing_; }
  bool writes_through() const { return through_; }
  // Whether the file is being written with direct I/O (false once it fell back to the cache).
  bool writes_directly() const;

 private:
  void flush_buffer();
  void write_all(const char* p, size_t n);
  void stop_direct();
  void drain();

  struct Writer;  // direct mode: writes the ring's full buffers while the caller fills the next
  struct WriterDeleter {
    void operator()(Writer* w) const;
  };
  [[noreturn]] void fail(const std::string& what, int err);
  void discard() noexcept;

  std::filesystem::path requested_, target_, writing_;
  int fd_ = -1;
  int slot_ = -1;
  bool through_ = false, committed_ = false;
  bool direct_ = false;  // opened for direct I/O: every write but the last is a whole aligned buffer_
  std::unique_ptr<char, void (*)(void*)> storage_{nullptr, nullptr};
  char* buffer_ = nullptr;  // kBufferBytes, aligned to kDirectAlign (a ring of them with a writer)
  size_t used_ = 0;
  std::unique_ptr<Writer, WriterDeleter> writer_;
};

// Writes `bytes` to `path` through an AtomicFile.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

// A path that must not outlive the process (e.g. a converted input): registered for removal by
// the interrupt handler, removed by the destructor.
class TemporaryPath {
 public:
  // `.NAME.mixq-tmp-PID-N` + suffix beside `near`; nothing is created.
  explicit TemporaryPath(const std::filesystem::path& near, std::string_view suffix = "");
  ~TemporaryPath();
  TemporaryPath(const TemporaryPath&) = delete;
  TemporaryPath& operator=(const TemporaryPath&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int slot_ = -1;
};

// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every registered temporary file,
// print "mixq: interrupted: no output was written" and exit with 128 + the signal number.
void install_interrupt_cleanup();
// Registered temporary paths (for tests).
size_t live_temporary_count();

// How a target path will be written: the rules at the top of this file.
enum class OutputKind { Replace, WriteThrough, Refuse };
struct OutputTarget {
  OutputKind kind;
  std::filesystem::path path;  // the file that will be replaced or written (symlinks followed)
  std::string why;             // for Refuse: what the path is
};
OutputTarget classify_output(const std::filesystem::path& requested);
// Classification by a file mode alone (st_mode), so the device rule is testable without a device.
OutputKind output_kind_of_mode(mode_t mode);

struct StaleTemporary {
  std::filesystem::path path;
  int64_t pid;
  uint64_t bytes;
};
// Files in the directory of `target` that mixq named as temporaries (`.mixq-tmp-PID`,
// `.mixq-src-PID`) for a process that no longer runs.
std::vector<StaleTemporary> find_stale_temporaries(const std::filesystem::path& target);

// The same-file guard: throws std::runtime_error naming both options when an output is the same
// file as an input or as another output (device + inode, so paths, symlinks and hard links all
// count). A directory input counts with every file directly in it. Labels name the options in the
// message (e.g. "--save-plan 'p.json'").
struct NamedPath {
  std::string label;
  std::filesystem::path path;
};
void check_distinct_files(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs);

}  // namespace mixq
