// The decode kernel's launch shape and stream-K workspace: one source for the kernel, its host
// handler and jax_fpx.dispatch (through the extension's kernel_workspace_elems). Plain C++ so the
// CPU-only build exports the same numbers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace jax_fpx {
namespace cuda {

// A CTA is kWarps consumer warps (one 16-row tile each: a work tile is 16*kWarps weight rows) plus
// one producer warp feeding the shared-memory ring.
constexpr int kWarps = 8;
constexpr int kThreads = (kWarps + 1) * 32;

// 8-token MMA tiles per CTA: the kernel for the smallest count >= ceil(rows / 8).
constexpr int kNumTokenTiles = 4;
constexpr int kTokenTiles[kNumTokenTiles] = {1, 2, 4, 8};
constexpr int kMaxKernelRows = 8 * kTokenTiles[kNumTokenTiles - 1];

// Resident CTAs per SM: two while the kernel fits 112 registers per thread (ptxas: 86-109 for
// MT <= 2), so each scheduler holds 4 consumer warps; one above (116-139 registers).
constexpr int CtasPerSm(int mt) { return mt <= 2 ? 2 : 1; }

// The workspace is sized for GPUs of up to this many SMs; a larger GPU runs fewer CTAs than SM slots.
constexpr int kMaxSms = 256;

constexpr int TokenTileIndex(int64_t rows) {
  int ti = 0;
  while (ti + 1 < kNumTokenTiles && 8 * int64_t(kTokenTiles[ti]) < rows) ++ti;
  return ti;
}

// float32 elements per CTA: kWarps flags + the partial sums of kWarps 16-row x 8*MT-token tiles.
constexpr int64_t WorkspacePerCta(int mt) { return int64_t(kWarps) * (1 + mt * 4 * 32); }

// Workspace for a launch of `rows` folded tokens (chunks of kMaxKernelRows reuse it); the flags
// region is padded to 32 floats, hence the + 32.
constexpr int64_t WorkspaceElems(int64_t rows) {
  const int mt = kTokenTiles[TokenTileIndex(std::min<int64_t>(std::max<int64_t>(rows, 1), kMaxKernelRows))];
  return int64_t(kMaxSms) * CtasPerSm(mt) * WorkspacePerCta(mt) + 32;
}

}  // namespace cuda
}  // namespace jax_fpx
