// CPU handler of `jax_fpx_linear`: dequantize one 16-row tile at a time into float32 and
// accumulate dot products in float32; row tiles are spread over a few threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "../linear_args.h"
#include "linear_cpu.h"

namespace jax_fpx {
namespace {

float Bf16ToF32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t F32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1F;
  const uint32_t man = h & 0x3FF;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    mag = man ? NAN : INFINITY;
  } else {
    mag = std::ldexp(static_cast<float>(man | 0x400), exp - 25);
  }
  uint32_t u;
  std::memcpy(&u, &mag, 4);
  u |= sign;
  std::memcpy(&mag, &u, 4);
  return mag;
}

uint16_t F32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7E00;
  if (a >= 65520.0f) return sign | 0x7C00;  // rounds to inf
  if (a < 6.103515625e-05f) {                // subnormal range: units of 2^-24
    const float units = std::nearbyint(a * 16777216.0f);  // RNE in the default FP mode
    return sign | static_cast<uint16_t>(units);
  }
  int e;
  const float frac = std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
  float mant = std::nearbyint(std::ldexp(frac, 11));  // 11 significant bits
  if (mant >= 2048.0f) {
    mant *= 0.5f;
    ++e;
  }
  const int exp = e - 1 + 15;
  return sign | static_cast<uint16_t>((exp << 10) | (static_cast<int>(mant) - 1024));
}

// Scale of row `row`, column `col` (per-channel f32 or per-group bf16, see layout.py).
float ScaleAt(const WeightShape& w, const void* scale, int64_t row, int64_t col) {
  const int64_t i = row * w.groups + col;
  return w.scale_bf16 ? Bf16BitsToFloat(static_cast<const uint16_t*>(scale)[i])
                      : static_cast<const float*>(scale)[i];
}

// Dequantizes row tile `nt` into `out` laid out k-major ([k_pad][16]), scale applied, so the
// GEMM below runs 16 independent accumulators (one per row) that the compiler vectorizes.
void DequantizeTile(const LinearProblem& p, const uint32_t* data, const void* scale,
                    const float* lut, int64_t nt, float* out) {
  const int64_t words = int64_t(kLanes) * p.bits;
  uint8_t codes[2 * kRegs];
  for (int64_t kb = 0; kb < p.k_blocks; ++kb) {
    const uint32_t* block = data + (nt * p.k_blocks + kb) * words;
    const int64_t col = p.groups == 1 ? 0 : kb / p.group_blocks;
    float s[kRowTile];
    for (int r = 0; r < kRowTile; ++r) s[r] = ScaleAt(p, scale, nt * kRowTile + r, col);
    float* ob = out + kb * kKBlock * kRowTile;
    for (int lane = 0; lane < kLanes; ++lane) {
      UnpackLane(block, *p.recipe, lane, codes);
      for (int r = 0; r < kRegs; ++r) {
        const int row = ElementRow(lane, r);
        for (int h = 0; h < 2; ++h) ob[ElementK(lane, r, h) * kRowTile + row] = lut[codes[2 * r + h]] * s[row];
      }
    }
  }
}

// y[m, n0:n0+16] for every m: 16 row accumulators per token, 4 tokens per pass over the
// tile, k in order (deterministic for a given machine). Built for AVX-512/AVX2+FMA too and
// chosen at run time where the CPU has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define JAX_FPX_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAX_FPX_CPU_CLONES
#endif
JAX_FPX_CPU_CLONES
void TileGemm(const LinearProblem& p, const float* xf, const float* wt, const float* bias,
              int64_t n0, bool fp16, uint16_t* y) {
  constexpr int kTok = 4;
  const int rows = static_cast<int>(std::min<int64_t>(kRowTile, p.n - n0));
  for (int64_t m0 = 0; m0 < p.m; m0 += kTok) {
    const int toks = static_cast<int>(std::min<int64_t>(kTok, p.m - m0));
    float acc[kTok][kRowTile] = {};
    const float* xr[kTok];
    for (int t = 0; t < kTok; ++t) xr[t] = xf + (m0 + std::min(t, toks - 1)) * p.k;
    for (int64_t k = 0; k < p.k; ++k) {
      const float* w = wt + k * kRowTile;
      for (int t = 0; t < kTok; ++t) {
        const float xv = xr[t][k];
        for (int r = 0; r < kRowTile; ++r) acc[t][r] += xv * w[r];
      }
    }
    for (int t = 0; t < toks; ++t) {
      uint16_t* yr = y + (m0 + t) * p.n + n0;
      for (int r = 0; r < rows; ++r) {
        const float v = bias ? acc[t][r] + bias[n0 + r] : acc[t][r];
        yr[r] = fp16 ? F32ToF16(v) : F32ToBf16(v);
      }
    }
  }
}

}  // namespace

ffi::Error LinearCpu(ffi::AnyBuffer x, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                     ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                     ffi::Result<ffi::AnyBuffer> ws, int32_t ebits, int32_t mbits,
                     int32_t in_features, int32_t out_features, int32_t group_size,
                     int32_t split_k) {
  (void)ws;
  LinearProblem p;
  if (auto err = ParseLinear(x, data, scale, bias, *y, ebits, mbits, in_features, out_features,
                             group_size, split_k, &p);
      err.failure()) {
    return err;
  }
  if (p.m == 0 || p.n == 0 || p.batch == 0) return ffi::Error::Success();

  std::vector<float> lut(1u << p.bits);
  for (uint32_t c = 0; c < lut.size(); ++c) lut[c] = DecodeCode(c, p.ebits, p.mbits);

  const auto* xs = static_cast<const uint16_t*>(x.untyped_data());
  auto* ys = static_cast<uint16_t*>(y->untyped_data());
  const auto* ds = static_cast<const uint32_t*>(data.untyped_data());
  const auto* ss = static_cast<const char*>(scale.untyped_data());
  const int64_t scale_bytes = p.scale_bf16 ? 2 : 4;
  const auto* bs = static_cast<const float*>(bias.untyped_data());
  const int64_t words_per_w = p.row_tiles * p.k_blocks * kLanes * p.bits;

  std::vector<float> xf(static_cast<size_t>(p.m * p.k));
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t bx = p.batch_x == 1 ? 0 : b, bw = p.batch_w == 1 ? 0 : b;
    const uint16_t* xb = xs + bx * p.m * p.k;
    for (int64_t i = 0; i < p.m * p.k; ++i) xf[i] = p.fp16 ? F16ToF32(xb[i]) : Bf16ToF32(xb[i]);
    const uint32_t* db = ds + bw * words_per_w;
    const char* sb = ss + bw * p.n_pad * p.groups * scale_bytes;
    const float* biasb = p.has_bias ? bs + (p.bias_batched ? b : 0) * p.n : nullptr;
    uint16_t* yb = ys + b * p.m * p.n;

    auto work = [&](int64_t t0, int64_t t1) {
      std::vector<float> tile(static_cast<size_t>(kRowTile * p.k_pad));
      for (int64_t nt = t0; nt < t1; ++nt) {
        DequantizeTile(p, db, sb, lut.data(), nt, tile.data());
        TileGemm(p, xf.data(), tile.data(), biasb, nt * kRowTile, p.fp16, yb);
      }
    };
    const int64_t threads = std::min<int64_t>(hw, p.row_tiles);
    if (threads <= 1 || p.row_tiles * p.k_pad * std::max<int64_t>(p.m, 16) < (1 << 18)) {
      work(0, p.row_tiles);
    } else {
      std::vector<std::thread> pool;
      const int64_t per = (p.row_tiles + threads - 1) / threads;
      for (int64_t t = 0; t < threads; ++t) {
        const int64_t t0 = t * per, t1 = std::min(p.row_tiles, t0 + per);
        if (t0 < t1) pool.emplace_back(work, t0, t1);
      }
      for (auto& th : pool) th.join();
    }
  }
  return ffi::Error::Success();
}

}  // namespace jax_fpx
