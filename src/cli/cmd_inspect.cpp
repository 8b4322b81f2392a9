#include <fmt/format.h>

#include "commands.h"
#include "mixq/io/inspect.h"
#include "whisper_commands.h"

namespace mixq::cli {

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show a GGUF file's metadata and per-tensor types, sizes and bits per weight");
  struct Opts {
    std::string file;
    bool json = false, no_metadata = false, no_tensors = false;
    size_t max_elems = 8;
  };
  auto opts = std::make_shared<Opts>();
  cmd->add_option("FILE", opts->file, "GGUF file")->required();
  cmd->add_flag("--json", opts->json, "Print JSON for scripts (all metadata, every array element)");
  cmd->add_flag("--no-metadata", opts->no_metadata, "Omit the metadata listing");
  cmd->add_flag("--no-tensors", opts->no_tensors, "Omit the per-tensor table");
  cmd->add_option("--max-array", opts->max_elems, "Array elements shown per metadata key in text form")
      ->capture_default_str();
  cmd->callback([opts] {
    if (inspect_whisper_if_whisper(opts->file, opts->json, !opts->no_tensors)) return;  // whisper.cpp's format
    const GgufFile f = GgufFile::open(opts->file);
    if (opts->json) {
      fmt::print("{}\n", inspect_json(f).dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
    } else {
      fmt::print("{}", inspect_text(f, {opts->max_elems, !opts->no_metadata, !opts->no_tensors}));
    }
  });
}

}  // namespace mixq::cli
