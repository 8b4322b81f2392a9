// What this CPU offers the kernels, read once from CPUID: every run-time dispatch (the engine's
// kernel sets, the quantizers' searches, the activation quantizers) asks here. The "os_" flags say
// the operating system saves the registers (XCR0), without which an instruction set is unusable.
#pragma once

namespace mixq {

struct CpuFeatures {
  bool os_avx = false;     // XCR0: XMM and YMM state
  bool os_avx512 = false;  // XCR0: XMM, YMM, opmask and ZMM state
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false, avx512vnni = false;

  // The sets the dispatchers pick by.
  bool has_avx2_fma() const { return os_avx && avx2 && fma; }
  bool has_avx512_fbwvl() const { return os_avx512 && avx512f && avx512bw && avx512vl; }
};

const CpuFeatures& cpu_features();

}  // namespace mixq
