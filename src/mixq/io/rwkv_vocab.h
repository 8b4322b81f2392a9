// How GGUF spells the tokens of an "rwkv" vocabulary (tokenizer.ggml.model "rwkv", llama.cpp's
// name): each token is a byte string, stored escaped as llama.cpp reads it back: printable ASCII
// as itself, backslash as \\, tab / newline / return as \t \n \r, any other byte as \xhh.
// The converter writes it (convert/rwkv_cpp.cpp), the tokenizer reads it (engine/tokenizer.cpp).
#pragma once

#include <string>
#include <string_view>

namespace mixq {

std::string rwkv_escape_token(std::string_view bytes);
// The bytes of an escaped token; throws std::invalid_argument for a bad escape.
std::string rwkv_unescape_token(std::string_view escaped);

}  // namespace mixq
