#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"mixq: mixed-precision quantization toolkit (GGUF, GGML types, NF4, INT8, 2/3-bit)"};
  app.require_subcommand(1);
  mixq::cli::register_inspect(app);
  mixq::cli::register_convert(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "mixq: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
