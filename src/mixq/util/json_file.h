// JSON files of mixq's own (measurements, plans): read with errors that name the file, written to
// a temporary file beside the destination and renamed into place.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace mixq {

// Throws std::runtime_error "cannot read WHAT 'PATH'" or "WHAT 'PATH' is not valid JSON: ...".
nlohmann::ordered_json read_json_file(const std::filesystem::path& path, const std::string& what);
// Throws std::runtime_error when the file cannot be written; nothing is left at `path` then.
void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j);

}  // namespace mixq
