// Whisper models into whisper.cpp's file format (io/whisper_file.h), F16 or F32, as whisper.cpp's
// own converter (models/convert-pt-to-ggml.py) writes them: its tensor names and order, 2-D and
// larger tensors in F16 except the conv biases (reshaped to [1, n]) and the positional embeddings,
// which stay F32 with every 1-D tensor; the 80/128-bin mel filterbank (convert/whisper_mel.h); the
// vocabulary as raw token bytes, id order, up to and including <|endoftext|> (whisper.cpp adds the
// other special tokens itself).
//
// Inputs (detected):
//  * CTranslate2 Whisper models (faster-whisper): a directory with model.bin (spec "WhisperSpec"),
//    and vocabulary.txt / vocabulary.json / tokenizer.json; or that model.bin. CTranslate2 fuses
//    the self-attention q/k/v (and the cross-attention k/v) into one matrix: it is split again, and
//    the key bias it adds (zeros: Whisper's keys have none) is dropped. int8 weights are
//    dequantized with their weight_scale.
//  * Hugging Face Whisper directories (config.json model_type "whisper", model.safetensors or
//    shards, tokenizer.json or vocab.json).
//  * whisper.cpp files (any type it loads): re-typed to F16 / F32.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixq/formats/type_table.h"

namespace mixq {

enum class WhisperSourceKind { WhisperCpp, CTranslate2, HuggingFace };
const char* whisper_source_name(WhisperSourceKind k);

// Whether `input` is a Whisper model mixq converts to whisper.cpp's format, and which kind; nullopt
// for anything else (GGUF, llama2.c, non-Whisper directories), which `mixq convert` turns into GGUF.
std::optional<WhisperSourceKind> detect_whisper_source(const std::filesystem::path& input);

struct WhisperConvertResult {
  WhisperSourceKind source;
  size_t tensors = 0;
  uint64_t bytes_written = 0;
  std::vector<std::string> warnings;
};

// outtype: F16 (default, whisper.cpp's usual file) or F32; anything else throws TypeError.
// Throws std::runtime_error naming the file and the tensor for malformed or non-Whisper input.
WhisperConvertResult convert_whisper(const std::filesystem::path& input, const std::filesystem::path& output,
                                     std::optional<TypeId> outtype);

// The vocabulary of a byte-level BPE tokenizer (GPT-2's printable-character spelling of bytes)
// back as raw bytes. Throws std::runtime_error for a character outside that alphabet.
std::string gpt2_token_bytes(const std::string& spelled);

}  // namespace mixq
