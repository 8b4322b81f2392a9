// Which implementation the quantizers' scale searches run: the portable reference (plain C++,
// vectorized by the compiler where it can) or the AVX-512 one (formats/search_avx512.cpp,
// compiled with target attributes, so a portable build carries it and uses it only where CPUID and
// the OS report AVX-512 F/DQ/BW/VL).
//
// The AVX-512 searches evaluate the same candidates with the same float and double operations in
// the same order as the reference, so they write the same bytes; tests/unit/test_search_simd.cpp
// holds them to the reference bit for bit. Where they do less work (a refinement round whose codes
// equal the best ones so far cannot raise the gain and ends the loop, as the reference's own test
// would), the result is the same by construction.
//
// MIXQ_KERNELS=scalar (or avx2, which has no search of its own) forces the reference, as it forces
// the engine's scalar kernels.
#pragma once

namespace mixq::search {

enum class Isa { scalar, avx512 };

bool avx512_available();           // this CPU and OS run the AVX-512 searches
Isa isa();                         // the implementation in use (default: the best available)
void set_isa(Isa isa);             // tests: switch between the reference and a SIMD path
const char* isa_name(Isa isa);

}  // namespace mixq::search
