#include "mixq/util/json_file.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "mixq/io/atomic_file.h"

namespace mixq {

nlohmann::ordered_json read_json_file(const std::filesystem::path& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw std::runtime_error(fmt::format("cannot read {} '{}': it is a directory; give a file", what, path.string()));
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("cannot read {} '{}'", what, path.string()));
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_json_text<nlohmann::ordered_json>(ss.str(), fmt::format("{} '{}'", what, path.string()));
}

void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j) {
  write_file_atomically(path, j.dump(1) + "\n");
}

}  // namespace mixq
