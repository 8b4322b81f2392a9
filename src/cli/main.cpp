#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "commands.h"
#include "whisper_commands.h"
#include "mixq/io/atomic_file.h"
#include "mixq/quantize/quantize_model.h"

int main(int argc, char** argv) {
  CLI::App app{"mixq: mixed-precision quantization toolkit (GGUF, GGML types, NF4, INT8, 2/3-bit)"};
  app.require_subcommand(1);
  // From here on an interruption removes every temporary file before exiting (io/atomic_file.h).
  mixq::install_interrupt_cleanup();
  mixq::cli::register_inspect(app);
  mixq::cli::register_convert(app);
  mixq::cli::register_quantize(app);
  mixq::cli::register_perplexity(app);
  mixq::cli::register_kld(app);
  mixq::cli::register_generate(app);
  mixq::cli::register_imatrix(app);
  mixq::cli::register_measure(app);
  mixq::cli::register_plan(app);
  mixq::cli::register_transcribe(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mixq::QuantizeCancelled& e) {
    std::fflush(stdout);
    fmt::print(stderr, "mixq: {}\n", e.what());
    return 130;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "mixq: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
