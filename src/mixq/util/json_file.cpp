#include "mixq/util/json_file.h"

#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

nlohmann::ordered_json read_json_file(const std::filesystem::path& path, const std::string& what) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(fmt::format("cannot read {} '{}'", what, path.string()));
  try {
    return nlohmann::ordered_json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{} '{}' is not valid JSON: {}", what, path.string(), e.what()));
  }
}

void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j) {
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp);
    if (!f) throw std::runtime_error(fmt::format("cannot write '{}'", tmp));
    f << j.dump(1) << "\n";
    if (!f) {
      f.close();
      std::filesystem::remove(tmp);
      throw std::runtime_error(fmt::format("cannot write '{}' (disk full?)", tmp));
    }
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace mixq
