#include <fmt/format.h>

#include "commands.h"
#include "mixq/convert/convert.h"
#include "whisper_commands.h"

namespace mixq::cli {

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert",
                                 "Convert a model to GGUF: a GGUF (type changes), a llama2.c checkpoint (+ tokenizer.bin), "
                                 "an rwkv.cpp file or a Hugging Face safetensors directory");
  struct Opts {
    std::string in, out, outtype, tokenizer, layout;
    bool clean_stale = false;
  };
  auto opts = std::make_shared<Opts>();
  cmd->add_option("INPUT", opts->in, "Input model file (format detected from its first bytes) or model directory")
      ->required();
  cmd->add_option("OUTPUT", opts->out, "Output GGUF (written to a temporary file, then renamed)")->required();
  cmd->add_option("--outtype", opts->outtype,
                  "f32: dequantize every tensor; f16/bf16: store float matrices in that type (1-D tensors stay "
                  "f32); omitted: keep every type");
  cmd->add_option("--tokenizer", opts->tokenizer, "llama2.c tokenizer.bin (default: tokenizer.bin beside the checkpoint)");
  add_clean_stale_flag(cmd, opts->clean_stale);
  cmd->add_option("--layout", opts->layout,
                  "RWKV-7: write rwkv.cpp's tensor layout (emb.weight, blocks.N.att.*) or llama.cpp's "
                  "(token_embd.weight, blk.N.time_mix_*); the engine reads both. RWKV-5.2 with llama.cpp: "
                  "llama.cpp's rwkv6 architecture (the same model)")
      ->check(CLI::IsMember({"rwkv.cpp", "llama.cpp"}));
  cmd->callback([opts] {
    std::vector<NamedPath> inputs = {{"INPUT", opts->in}, {"--tokenizer", opts->tokenizer}};
    // A llama2.c checkpoint without --tokenizer reads the tokenizer found beside it.
    std::error_code ec;
    if (opts->tokenizer.empty() && std::filesystem::is_regular_file(opts->in, ec) &&
        detect_model_format(opts->in) == ModelFormat::Llama2c) {
      const auto beside = std::filesystem::path(opts->in).parent_path();
      for (const char* name : {"tokenizer.bin", "tok512.bin"}) inputs.push_back({"the tokenizer", beside / name});
    }
    check_outputs(inputs, {{"OUTPUT", opts->out}}, opts->clean_stale);
    std::optional<TypeId> outtype;
    if (!opts->outtype.empty()) outtype = require_type(opts->outtype).id;
    if (convert_whisper_if_whisper(opts->in, opts->out, outtype)) return;  // Whisper: whisper.cpp's format
    const ConvertRequest req{opts->in, opts->out, outtype, opts->tokenizer};
    const auto layout = parse_rwkv_layout(opts->layout);
    const ConvertResult r = layout ? convert_to_gguf(req, *layout) : convert_to_gguf(req);
    for (const auto& w : r.warnings) fmt::print(stderr, "mixq: warning: {}\n", w);
    fmt::print("wrote {} from a {} model: {} tensors, {} bytes\n", opts->out, model_format_name(r.format), r.tensors,
               r.bytes_written);
  });
}

}  // namespace mixq::cli
