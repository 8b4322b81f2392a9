#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "commands.h"

namespace mixq::cli {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot read the text file '{}'", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mixq::cli
