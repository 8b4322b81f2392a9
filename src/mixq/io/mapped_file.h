// A read-only memory mapping of a whole file: tensor data is read in place, never copied.
//
// Rewriting in place (rewrite): a range's pages are made writable for one callback, then read-only
// again. The mapping is private, so the pages written become this process's own (copy-on-write:
// anonymous memory in place of the file's page cache pages, the same resident size) and the file
// is never changed. The range keeps a layout tag (the engine's decode layouts, engine/repack.h)
// that layout_at() answers for its first byte, from any thread, for as long as the mapping lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <utility>
#include <vector>

namespace mixq {

// Makes the pages of [p, p + n) (a private mapping made writable, e.g. inside a rewrite's
// callback) this process's own copies in one call rather than one copy-on-write fault per page
// as they are written (MADV_POPULATE_WRITE, Linux 5.14; a hint: errors and older kernels ignored).
void populate_for_writing(void* p, size_t n);

class MappedFile {
 public:
  MappedFile() = default;
  // Throws std::runtime_error naming the file and the OS error when it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  // Tells the kernel the pages of [p, p + n) are not needed any more: they leave this process's
  // resident memory and are read again from the file if touched. Streaming passes call it so
  // their footprint stays one tensor, not the whole model.
  // Rewritten ranges keep their pages (dropping them would bring the file's bytes back).
  void drop_pages(const void* p, size_t n) const;
  size_t size() const { return size_; }
  // Copies [p, p + n) into dst. Inside the mapping the bytes are read from the file (pread), not
  // through the mapping: a pass that reads each byte once (quantizing) then neither faults the
  // pages in nor has to unmap them again, which costs more than the copy. Rewritten ranges and
  // memory outside the mapping are copied with memcpy.
  void copy_out(const void* p, size_t n, void* dst) const;

  // Calls fn with [p, p + n) (inside the mapping) writable, then records `layout` (non-zero) for
  // p; returns false, calling nothing, when p has a layout already (rewrites are serialized, so
  // two loads of one file rewrite a range once). Throws std::runtime_error when the pages cannot
  // be made writable (the range then keeps the file's bytes).
  bool rewrite(const void* p, size_t n, uint8_t layout, const std::function<void(uint8_t*)>& fn);
  // The layout tag recorded for a range starting at p by any live mapping's rewrite, or 0 (the
  // file's bytes) for any other address.
  static uint8_t layout_at(const void* p);

 private:
  void release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;  // the file, open while mapped (copy_out reads it)
  std::vector<std::pair<uintptr_t, uintptr_t>> rewritten_;  // [begin, end) of each rewrite
};

}  // namespace mixq
