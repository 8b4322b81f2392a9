// A read-only memory mapping of a whole file: tensor data is read in place, never copied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

namespace mixq {

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
  void drop_pages(const void* p, size_t n) const;
  size_t size() const { return size_; }

 private:
  void release();
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mixq
