// The CLI is thin: each command parses its options and calls the library.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace mixq::cli {

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
