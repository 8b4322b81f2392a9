// whisper.cpp's model files (its own ggml format, not GGUF), read and written:
//
//   u32 magic 0x67676d6c ("ggml")
//   i32 n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
//       n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype
//   i32 n_mel, n_fft; f32 filters[n_mel * n_fft]          (the mel filterbank, row per mel bin)
//   i32 n_tokens; n_tokens x (u32 length, bytes)          (vocabulary: token i is the i-th entry)
//   then until the end of the file, per tensor:
//   i32 n_dims, name length, ttype; i32 ne[n_dims] (ne0 first); name; data (packed, no alignment)
//
// ftype is ggml's "ftype" (0 all F32, 1 mostly F16, 2 Q4_0, 3 Q4_1, 7 Q8_0, 8 Q5_0, 9 Q5_1,
// 10..14 Q2_K..Q6_K) plus 1000 x the quantization version (2) in quantized files.
//
// What whisper.cpp's loader (commit 233fe1fc9b48) requires, and read_whisper_file checks:
//  * the tensors are exactly the set whisper_tensor_specs lists for the hparams (none at all is
//    accepted: whisper.cpp's header-only test fixtures), each once, with its shape;
//  * every "weight" tensor (the 2-D matrices and the token embedding) has the one type the file's
//    ftype names: whisper.cpp allocates them in that type and refuses a tensor of another size.
//    The convolution kernels are F16 (F32 in an all-F32 file); everything else is F32.
// A file whose weights mix types (mixq quantize --tensor-type) breaks only the second rule; it is
// read with `allow_mixed_weights` and whisper_file_mixes_types says so.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mixq/formats/type_table.h"
#include "mixq/io/mapped_file.h"

namespace mixq {

class AtomicFile;

inline constexpr uint32_t kWhisperMagic = 0x67676d6c;
inline constexpr int32_t kWhisperQuantVersion = 2;  // ggml's GGML_QNT_VERSION
inline constexpr int32_t kWhisperQuantFactor = 1000;

struct WhisperHparams {
  int32_t n_vocab = 0, n_audio_ctx = 0, n_audio_state = 0, n_audio_head = 0, n_audio_layer = 0, n_text_ctx = 0,
          n_text_state = 0, n_text_head = 0, n_text_layer = 0, n_mels = 0, ftype = 0;
  bool operator==(const WhisperHparams&) const = default;
};

struct WhisperMelFilters {
  int32_t n_mel = 0, n_fft = 0;
  std::vector<float> data;  // n_mel rows of n_fft values
};

// How whisper.cpp types a tensor: Weight takes the file's type, Conv is F16 (F32 in an F32 file),
// F32 always F32.
enum class WhisperTensorRole { Weight, Conv, F32 };

struct WhisperTensorSpec {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length
  WhisperTensorRole role;
};

// The tensors whisper.cpp's loader creates for these hparams, in the order of openai's state dict
// (which whisper.cpp's converter writes).
std::vector<WhisperTensorSpec> whisper_tensor_specs(const WhisperHparams& hp);

// The weight type a file's ftype names (the quantization version removed), or nullopt for an
// ftype whisper.cpp does not load.
std::optional<TypeId> whisper_weight_type(int32_t ftype);
// The header ftype for a file whose weights are `type` (1000 x 2 added for quantized types);
// throws TypeError for types whisper.cpp cannot load.
int32_t whisper_ftype_for(TypeId type);
// The types whisper.cpp loads: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k .. q6_k.
bool whisper_loads_type(TypeId type);
// The type whisper.cpp gives a tensor of this role in a file whose weights are `weight_type`.
TypeId whisper_stored_type(WhisperTensorRole role, TypeId weight_type);

// whisper.cpp's quantize rule (examples/quantize + common-ggml): a tensor is quantized when it is
// 2-D and not encoder.conv1.bias, encoder.conv2.bias or a positional embedding. For a valid file
// these are exactly the Weight tensors.
bool whisper_quantizes_tensor(const std::string& name, size_t n_dims);

struct WhisperTensor {
  std::string name;
  std::vector<int64_t> ne;
  TypeId type;
  std::span<const uint8_t> data;  // a view into the mapping
  int64_t elements() const;
  int64_t rows() const { return elements() / ne[0]; }
};

struct WhisperReadOptions {
  // Accept weight tensors whose type differs from the ftype's (mixq's mixed files).
  bool allow_mixed_weights = false;
};

class WhisperFile {
 public:
  // Throws std::runtime_error "PATH: not a valid whisper.cpp model: WHAT (at byte N)" or naming the
  // tensor, for every departure from the rules above.
  static WhisperFile open(const std::filesystem::path& path, const WhisperReadOptions& options = {});

  const std::filesystem::path& path() const { return path_; }
  WhisperHparams hparams;
  WhisperMelFilters filters;
  std::vector<std::string> vocab;
  std::vector<WhisperTensor> tensors;
  const WhisperTensor* find(const std::string& name) const;
  // The type the header's ftype names.
  TypeId weight_type() const;
  // Whether some weight tensor's type differs from weight_type(): stock whisper.cpp refuses it.
  bool mixes_types() const;
  const MappedFile& mapping() const { return map_; }

 private:
  std::filesystem::path path_;
  MappedFile map_;
};

// Whether the file starts with whisper.cpp's magic (false for directories and short files).
bool is_whisper_file(const std::filesystem::path& path);

// Writes a whisper.cpp file through an AtomicFile: header, filters, vocabulary, then tensors in the
// order given. Nothing appears at `path` unless finish() returns.
class WhisperWriter {
 public:
  WhisperWriter(const std::filesystem::path& path, const WhisperHparams& hp, const WhisperMelFilters& filters,
                const std::vector<std::string>& vocab);
  ~WhisperWriter();
  WhisperWriter(const WhisperWriter&) = delete;
  WhisperWriter& operator=(const WhisperWriter&) = delete;
  // `data` must hold the tensor in `type` (rows of ne[0] values).
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, TypeId type, std::span<const uint8_t> data);
  uint64_t bytes_written() const { return bytes_; }
  void finish();

 private:
  std::unique_ptr<AtomicFile> out_;
  uint64_t bytes_ = 0;
};

// The bytes of a tensor's data in `type` for shape ne; throws TypeError when rows do not fill blocks.
size_t whisper_tensor_bytes(TypeId type, const std::vector<int64_t>& ne);

}  // namespace mixq
