// Writes a GGUF holding one tensor per GGML type that mixq can quantize, all made from the same
// deterministic source values (tensor "zoo.source", F32). The Python interop test reads it with
// the `gguf` package and compares that package's dequantization with mixq's.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mixq/formats/type_table.h"
#include "mixq/io/gguf.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mixq_type_zoo OUT.gguf\n");
    return 2;
  }
  constexpr int64_t kRow = 512, kRows = 6;
  std::mt19937 rng(1234);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  std::vector<float> src(kRow * kRows);
  for (auto& v : src) v = gauss(rng);
  src[7] = 0.9f;  // an outlier, as real weights have
  src[kRow + 3] = -0.7f;

  try {
    mixq::GgufWriter w(argv[1]);
    w.set("general.architecture", mixq::GgufValue::string("zoo"));
    w.set("general.name", mixq::GgufValue::string("mixq type zoo"));
    w.add_tensor("zoo.source", {kRow, kRows}, mixq::TypeId::F32);
    std::vector<const mixq::TypeTraits*> types;
    for (const auto& t : mixq::all_types()) {
      if (t.is_extension() || !t.can_quantize() || !t.can_dequantize() || t.id == mixq::TypeId::F32) continue;
      // Activation types of the dot products, never stored as weights.
      if (t.id == mixq::TypeId::Q8_1 || t.id == mixq::TypeId::Q8_K) continue;
      w.add_tensor(std::string("zoo.") + t.name, {kRow, kRows}, t.id);
      types.push_back(&t);
    }
    w.write_tensor_data({reinterpret_cast<const uint8_t*>(src.data()), src.size() * sizeof(float)});
    for (const auto* t : types) {
      std::vector<uint8_t> q(t->row_bytes(kRow) * kRows);
      mixq::quantize_rows(t->id, src.data(), q.data(), kRows, kRow);
      w.write_tensor_data(q);
    }
    w.finish();
    std::printf("wrote %s: %zu quantized types\n", argv[1], types.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixq_type_zoo: %s\n", e.what());
    return 1;
  }
  return 0;
}
