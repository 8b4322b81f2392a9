// JSON files of mixq's own (measurements, plans): read with errors that name the file, written
// through AtomicFile (io/atomic_file.h). Every JSON mixq reads, its own or a model's, is parsed by
// parse_json_text, which caps the nesting depth.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mixq {

// No file mixq reads nests deeper than a few levels. nlohmann's parser is iterative, but dump(),
// copies and comparisons recurse, so a 100,000-deep array would overflow the stack later (in an
// error message, say): refuse it while parsing.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text` (what names it in errors: "--config 'p.json'"); throws std::runtime_error
// "WHAT is not valid JSON: ..." or "WHAT nests deeper than 64 levels".
template <typename Json>
Json parse_json_text(std::string_view text, const std::string& what) {
  try {
    return Json::parse(text, [&](int depth, nlohmann::json::parse_event_t event, Json&) {
      if (depth > kMaxJsonDepth && (event == nlohmann::json::parse_event_t::object_start ||
                                    event == nlohmann::json::parse_event_t::array_start)) {
        throw std::runtime_error(fmt::format("{} nests deeper than {} levels: not a file mixq reads", what, kMaxJsonDepth));
      }
      return true;
    });
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{} is not valid JSON: {}", what, e.what()));
  }
}

// Throws std::runtime_error "cannot read WHAT 'PATH'" or "WHAT 'PATH' is not valid JSON: ...".
nlohmann::ordered_json read_json_file(const std::filesystem::path& path, const std::string& what);
// Throws std::runtime_error when the file cannot be written; nothing is left at `path` then.
void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j);

}  // namespace mixq
