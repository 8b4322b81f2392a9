// Row-interleaved decode layouts: a weight matrix's rows repacked at load, four at a time, so one
// 64-byte load holds the same block of four rows and one activation block (broadcast to the four
// 128-bit lanes) serves them all (the idea of ik_llama.cpp's _R4 types and ggml's CPU repack; the
// layouts and kernels here are mixq's own).
//
// A repacked matrix has exactly the bytes of the original: rows 4g .. 4g + 3 (g < rows / 4) are one
// group of nb = n / 32 interleaved blocks, in block order, at the group's original offset
// (4 * g * row_bytes); the rows past the last full group (rows % 4 of them) follow in the file's
// layout. Interleaved blocks, row r = 0..3 of the group, block b (the file's block b of each row):
//   q5_0x4 (88 bytes): d[4] (f16, row r's scale); lo, hi: u64 fifth-bit masks, bit 16 r + i of lo =
//     row r's fifth bit of value i, of hi = value 16 + i (i < 16); qs[64]: bytes 16 r .. 16 r + 15
//     = row r's 16 nibble bytes (low nibble value i, high nibble value 16 + i), as in the file.
//   q8_0x4 (136 bytes): d[4]; qs[128]: byte 16 r + i = row r's code i + 128 (i < 16), byte
//     64 + 16 r + i = row r's code 16 + i + 128: unsigned, as VNNI's vpdpbusd takes them.
//   iq4_nl x4 (72 bytes): d[4]; qs[64] as q5_0x4's.
// In place (the default where the kernel set has the kernels, Model::repack_for_decode): the
// file's mapping is private, so interleave_in_place rewrites a matrix's own pages (MappedFile::
// rewrite: anonymous pages replace the file's, no second copy; one group of scratch) and tags them
// (interleaved()). Every reader of a weight's bytes then asks interleaved(t): the decode kernels
// read the groups, everything else reads file_layout_rows / dequantize_tensor.
// The kernels (RowDot4Fn) start each int32 lane at -bias * (the activation codes' sum it meets),
// so every block's integer sum is exactly the reference's; only the F32 summation order differs.
#pragma once

#include <cstdint>
#include <vector>

#include "mixq/engine/kernels.h"
#include "mixq/formats/type_table.h"
#include "mixq/io/gguf.h"
#include "mixq/util/thread_pool.h"

namespace mixq::kernels {

inline constexpr int kRepackRows = 4;
// The layout tag (tensor_layout, io/gguf.h) of a matrix interleaved in place.
inline constexpr uint8_t kInterleavedLayout = 1;

// Whether the type has a four-row interleaved layout.
bool has_repacked_layout(TypeId id);
// src: n_rows rows of n values of type id, as in the file; dst (the same byte count, not
// overlapping src): the repacked matrix described above. n must fill whole blocks.
void repack_rows(TypeId id, const void* src, int64_t n_rows, int64_t n, void* dst);
// The same, data becoming its own repacked matrix (one group of four rows of scratch per thread).
// With a pool, runs of groups go to its threads; each run's pages are made the process's own first
// (populate_for_writing: data may be a private file mapping, whose pages would otherwise be copied
// one fault at a time).
void repack_rows_in_place(TypeId id, void* data, int64_t n_rows, int64_t n, ThreadPool* pool = nullptr);
// Rows [r0, r1) of a repacked matrix back in the file's layout ((r1 - r0) * row_bytes(n) to out).
void unpack_rows(TypeId id, const void* packed, int64_t n_rows, int64_t n, int64_t r0, int64_t r1, void* out);
// Row r of a repacked matrix back in the file's layout (row_bytes(n) bytes to out).
void unpacked_row(TypeId id, const void* packed, int64_t n_rows, int64_t n, int64_t r, void* out);

// Whether t's bytes are interleaved (interleave_in_place rewrote them, by any model of its file).
bool interleaved(const GgufTensor& t);
// Interleaves a matrix of `file` in place (a 2-D matrix of a type with a layout), on the pool's
// threads where one is given; false when it was not rewritten: no layout for it, a parse()d
// buffer, or interleaved already.
bool interleave_in_place(const GgufFile& file, const GgufTensor& t, ThreadPool* pool = nullptr);
// Rows [r0, r1) of t in the file's layout: t's own bytes, or (interleaved) unpacked into buf.
const uint8_t* file_layout_rows(const GgufTensor& t, int64_t r0, int64_t r1, std::vector<uint8_t>& buf);
// Every value of t (n_elements floats), whatever its layout.
void dequantize_tensor(const GgufTensor& t, float* out);

// The AVX-512 VNNI interleaved kernels by type id (kRowDotSlots entries, null where none), or null
// where the build has none; only avx512_kernels() calls it, after its CPU checks.
const RowDot4Fn* avx512_row_dot4_table();

}  // namespace mixq::kernels
