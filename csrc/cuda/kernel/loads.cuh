// Global-memory loads of the FPx GEMM: streaming weight loads that skip L1, and activation loads.
#pragma once

#include <cstdint>

namespace jax_fpx {
namespace cuda {

// Weights are read exactly once: non-coherent path, no L1 allocation (keeps L1 for activations).
__device__ __forceinline__ uint4 LdStream16(const uint32_t* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}
__device__ __forceinline__ uint2 LdStream8(const uint32_t* p) {
  uint2 r;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t LdStream4(const uint32_t* p) {
  uint32_t r;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}

// Predicated forms (no branch: the loads stay schedulable across the unrolled ring).
__device__ __forceinline__ void LdStream16If(const uint32_t* p, bool on, uint32_t* r) {
  asm(
      "{ .reg .pred q; setp.ne.b32 q, %5, 0;\n"
      "@q ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4]; }"
      : "+r"(r[0]), "+r"(r[1]), "+r"(r[2]), "+r"(r[3])
      : "l"(p), "r"(static_cast<int>(on)));
}
__device__ __forceinline__ void LdStream8If(const uint32_t* p, bool on, uint32_t* r) {
  asm(
      "{ .reg .pred q; setp.ne.b32 q, %3, 0;\n"
      "@q ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2]; }"
      : "+r"(r[0]), "+r"(r[1])
      : "l"(p), "r"(static_cast<int>(on)));
}
__device__ __forceinline__ void LdStream4If(const uint32_t* p, bool on, uint32_t* r) {
  asm(
      "{ .reg .pred q; setp.ne.b32 q, %2, 0;\n"
      "@q ld.global.nc.L1::no_allocate.u32 %0, [%1]; }"
      : "+r"(r[0])
      : "l"(p), "r"(static_cast<int>(on)));
}

template <int BITS>
__device__ __forceinline__ void LoadBlockIf(const uint32_t* block, int lane, bool on, uint32_t (&w)[BITS]) {
  int word = 0, part_base = 0;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int p = PartWidth(BITS, i);
    if (p == 4) LdStream16If(block + part_base + lane * 4, on, &w[word]);
    else if (p == 2) LdStream8If(block + part_base + lane * 2, on, &w[word]);
    else if (p == 1) LdStream4If(block + part_base + lane, on, &w[word]);
    word += p;
    part_base += kLanes * p;
  }
}

// Loads the `BITS` words one lane holds of a 16x64 block: part by part, one vector load each
// (part width 4 -> 16 B, 2 -> 8 B, 1 -> 4 B); see jax_fpx/layout.py.
template <int BITS>
__device__ __forceinline__ void LoadBlock(const uint32_t* block, int lane, uint32_t (&w)[BITS]) {
  int word = 0;         // index into w
  int part_base = 0;    // word offset of the part inside the block
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int p = PartWidth(BITS, i);
    if (p == 4) {
      const uint4 v = LdStream16(block + part_base + lane * 4);
      w[word] = v.x; w[word + 1] = v.y; w[word + 2] = v.z; w[word + 3] = v.w;
    } else if (p == 2) {
      const uint2 v = LdStream8(block + part_base + lane * 2);
      w[word] = v.x; w[word + 1] = v.y;
    } else if (p == 1) {
      w[word] = LdStream4(block + part_base + lane);
    }
    word += p;
    part_base += kLanes * p;
  }
}

// Two 16-bit activations x[k], x[k+1] packed in one register (k even); 8-byte vector form loads
// x[k..k+3]. Activations are re-read by every warp of the row-tile grid: keep them cached.
__device__ __forceinline__ uint2 LdAct8(const uint16_t* p) {
  uint2 r;
  asm("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

// x[row, k..k+3] as two registers; elements at k >= kmax (or a row out of range) read as 0.
// `vec`: rows are 8-byte aligned (K % 4 == 0), so one vector load serves whole quads.
__device__ __forceinline__ uint2 LoadActQuad(const uint16_t* row, int64_t k, int64_t kmax, bool valid,
                                             bool vec) {
  if (!valid) return make_uint2(0u, 0u);
  if (vec && k + 4 <= kmax) return LdAct8(row + k);
  uint32_t h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = (k + i < kmax) ? static_cast<uint32_t>(__ldg(row + k + i)) : 0u;
  return make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}

}  // namespace cuda
}  // namespace jax_fpx
