#include "mixq/formats/search_isa.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

#include "mixq/util/cpu_features.h"

namespace mixq::search {
namespace {

Isa default_isa() {
  if (const char* want = std::getenv("MIXQ_KERNELS"); want != nullptr) {
    const std::string_view w(want);
    if (w == "scalar" || w == "avx2") return Isa::scalar;
  }
  return avx512_available() ? Isa::avx512 : Isa::scalar;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{default_isa()};
  return isa;
}

}  // namespace

bool avx512_available() {
  static const bool available = cpu_features().has_avx512_fbwvl() && cpu_features().avx512dq;
  return available;
}

Isa isa() { return current().load(std::memory_order_relaxed); }

void set_isa(Isa isa) { current().store(isa == Isa::avx512 && !avx512_available() ? Isa::scalar : isa); }

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : "scalar"; }

}  // namespace mixq::search
