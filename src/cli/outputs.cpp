// The checks every command that writes files runs before any work (rules: io/atomic_file.h).
#include <fmt/format.h>

#include "commands.h"

namespace mixq::cli {

void check_outputs(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs, bool clean_stale) {
  check_distinct_files(inputs, outputs);
  for (const auto& out : outputs) {
    if (out.path.empty()) continue;
    // What AtomicFile would refuse at the end of a long run is refused now.
    const OutputTarget t = classify_output(out.path);
    if (t.kind == OutputKind::Refuse) {
      throw std::runtime_error(fmt::format("{} '{}' is {}: give a file path", out.label, out.path.string(), t.why));
    }
    const std::filesystem::path dir = t.path.has_parent_path() ? t.path.parent_path() : std::filesystem::path(".");
    std::error_code ec;
    if (t.kind == OutputKind::Replace && !std::filesystem::is_directory(dir, ec)) {
      throw std::runtime_error(fmt::format("cannot write {} '{}': the directory '{}' does not exist; create it or "
                                           "choose another path",
                                           out.label, out.path.string(), dir.string()));
    }
    for (const auto& stale : find_stale_temporaries(out.path)) {
      if (clean_stale) {
        std::error_code ec;
        std::filesystem::remove(stale.path, ec);
        if (ec) {
          throw std::runtime_error(fmt::format("cannot remove the stale temporary file '{}': {}", stale.path.string(),
                                               ec.message()));
        }
        fmt::print(stderr, "mixq: removed the stale temporary file '{}' ({} bytes) of process {}\n",
                   stale.path.string(), stale.bytes, stale.pid);
      } else {
        fmt::print(stderr,
                   "mixq: warning: '{}' ({} bytes) is a temporary file of process {}, which no longer runs "
                   "(interrupted by SIGKILL or a crash?); --clean-stale removes it\n",
                   stale.path.string(), stale.bytes, stale.pid);
      }
    }
  }
}

void add_clean_stale_flag(CLI::App* cmd, bool& flag) {
  cmd->add_flag("--clean-stale", flag,
                "Remove temporary files that killed mixq runs left beside the outputs (they are reported "
                "otherwise)");
}

void add_threads_option(CLI::App* cmd, int& threads) {
  cmd->add_option("-t,--threads", threads, fmt::format("Threads (default: all cores; at most {})", kMaxThreads));
}

void add_attention_option(CLI::App* cmd, std::string& attention) {
  cmd->add_option("--attention", attention,
                  "Attention numerics: f16 (llama.cpp's reference figures, default), tiled (F32 tiles over an F16 "
                  "cache, as newer llama.cpp builds compute it), f32");
}

int checked_threads(int requested) {
  if (requested < 0) throw std::runtime_error(fmt::format("-t {}: give a number of threads >= 1 (0: all cores)", requested));
  if (requested > kMaxThreads) {
    throw std::runtime_error(fmt::format("-t {}: at most {} threads (more only add scheduling overhead)", requested,
                                         kMaxThreads));
  }
  return requested;
}

void check_chunks(int chunks, const char* option) {
  if (chunks < 0) {
    throw std::runtime_error(fmt::format("{} {}: give a number of chunks >= 1 (0: all chunks)", option, chunks));
  }
}

}  // namespace mixq::cli
