#include "mixq/formats/search_isa.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace mixq::search {
namespace {

// AVX-512 F/DQ/BW/VL from CPUID leaf 7 (EBX bits 16, 17, 30, 31) and the OS saving the opmask and
// ZMM state (XCR0 bits 1, 2, 5, 6, 7).
bool detect_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0 || (ecx & (1u << 27)) == 0) return false;  // OSXSAVE
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0xe6u) != 0xe6u) return false;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  const unsigned need_ebx = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
  return (ebx & need_ebx) == need_ebx;
#else
  return false;
#endif
}

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
  static const bool available = detect_avx512();
  return available;
}

Isa isa() { return current().load(std::memory_order_relaxed); }

void set_isa(Isa isa) { current().store(isa == Isa::avx512 && !avx512_available() ? Isa::scalar : isa); }

const char* isa_name(Isa isa) { return isa == Isa::avx512 ? "avx512" : "scalar"; }

}  // namespace mixq::search
