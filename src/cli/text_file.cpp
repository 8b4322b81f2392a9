#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "commands.h"

namespace mixq::cli {

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  // An ifstream opens a directory and reads it as empty text, which would score nothing.
  if (std::filesystem::is_directory(path, ec)) {
    throw std::runtime_error(fmt::format("cannot read the text file '{}': it is a directory; give a file", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read the text file '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mixq::cli
