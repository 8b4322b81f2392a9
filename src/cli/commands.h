// The CLI is thin: each command parses its options and calls the library.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "mixq/io/atomic_file.h"
#include "mixq/io/gguf.h"
#include "mixq/util/thread_pool.h"

namespace mixq::cli {

// Run by every command that writes files, before any work: the same-file guard over its inputs
// and outputs, and the report (or with --clean-stale the removal) of stale temporary files beside
// each output. Empty paths are skipped.
void check_outputs(const std::vector<NamedPath>& inputs, const std::vector<NamedPath>& outputs, bool clean_stale);
void add_clean_stale_flag(CLI::App* cmd, bool& flag);
// -t: 0 (all cores) .. kMaxThreads; throws otherwise.
int checked_threads(int requested);
// The options several commands share, with one help text each: -t/--threads and --attention.
void add_threads_option(CLI::App* cmd, int& threads);
void add_attention_option(CLI::App* cmd, std::string& attention);
// Throws naming the first tensor of `f` (model `label`) that holds NaN / infinity; called when an
// evaluation produced a non-finite figure.
[[noreturn]] void throw_non_finite(const GgufFile& f, const std::string& label);
// Rethrows `e` (an evaluation of model `label` failed), naming the first non-finite tensor of `f`
// when there is one.
[[noreturn]] void explain_failure(const GgufFile& f, const std::string& label, const std::runtime_error& e);
// --chunks: 0 means all; negative is refused.
void check_chunks(int chunks, const char* option);

// The whole file as bytes; throws std::runtime_error "cannot read the text file 'PATH'".
std::string read_text_file(const std::string& path);

// Each register_* adds a subcommand to the app; its callback runs the command and throws on error.
void register_inspect(CLI::App& app);
void register_convert(CLI::App& app);
void register_quantize(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_kld(CLI::App& app);
void register_generate(CLI::App& app);
void register_imatrix(CLI::App& app);
void register_measure(CLI::App& app);
void register_plan(CLI::App& app);

}  // namespace mixq::cli
