#include <fmt/format.h>

#include "commands.h"
#include "mixq/convert/gguf_convert.h"

namespace mixq::cli {

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Rewrite a GGUF file, optionally as F32 (dequantize all), F16 or BF16");
  struct Opts {
    std::string in, out, outtype;
  };
  auto opts = std::make_shared<Opts>();
  cmd->add_option("INPUT", opts->in, "Input GGUF")->required();
  cmd->add_option("OUTPUT", opts->out, "Output GGUF (written to a temporary file, then renamed)")->required();
  cmd->add_option("--outtype", opts->outtype,
                  "f32: dequantize every tensor; f16/bf16: store float matrices in that type; "
                  "omitted: keep every type");
  cmd->callback([opts] {
    std::optional<TypeId> outtype;
    if (!opts->outtype.empty()) outtype = require_type(opts->outtype).id;
    const GgufFile in = GgufFile::open(opts->in);
    const ConvertStats s = convert_gguf(in, opts->out, outtype);
    fmt::print("wrote {}: {} tensors ({} converted), {} bytes\n", opts->out, s.tensors, s.converted, s.bytes_written);
  });
}

}  // namespace mixq::cli
