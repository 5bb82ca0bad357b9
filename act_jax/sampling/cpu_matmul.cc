// y[M, P*32] = x[M, K] @ w, w stored as P contiguous column panels [P, K, 32] (fp32).
//
// Why a kernel of our own: decoding multiplies a few rows by every weight matrix, so
// it is bound by streaming the weights. XLA:CPU's dot kernel (YNNPACK) reads a plain
// [K, N] matrix in 256-byte pieces at a stride of N floats and computes and streams
// in turn; a batch of panel dots it runs on one thread. This loop reads each panel
// once, in order, with all rows' accumulators (8 rows x 32 columns) in registers, and
// splits the panels over XLA's intra-op threads. Written with GCC vector extensions,
// so -march=native picks the widest vectors the machine has.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));
constexpr int64_t kWidth = 32;  // panel width: two 16-float vectors
constexpr int64_t kRows = 8;    // rows per register tile

template <int R>
inline void Tile(const float* x, int64_t K, const float* w, float* y, int64_t ldy) {
  v16 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    const v16 w0 = *reinterpret_cast<const v16*>(w + k * kWidth);
    const v16 w1 = *reinterpret_cast<const v16*>(w + k * kWidth + 16);
    for (int r = 0; r < R; ++r) {
      const float s = x[r * K + k];
      a0[r] += s * w0;
      a1[r] += s * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    *reinterpret_cast<v16*>(y + r * ldy) = a0[r];
    *reinterpret_cast<v16*>(y + r * ldy + 16) = a1[r];
  }
}

// Panels [p0, p1): each is read from memory once, then reused from cache by every
// 8-row tile (so a prefill's many rows are compute-bound, not re-streaming).
void Panels(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t p0,
            int64_t p1, int64_t ldy) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* wp = w + p * K * kWidth;
    for (int64_t m = 0; m < M; m += kRows) {
      const float* xm = x + m * K;
      float* ym = y + m * ldy + p * kWidth;
      switch (std::min(kRows, M - m)) {
        case 8: Tile<8>(xm, K, wp, ym, ldy); break;
        case 7: Tile<7>(xm, K, wp, ym, ldy); break;
        case 6: Tile<6>(xm, K, wp, ym, ldy); break;
        case 5: Tile<5>(xm, K, wp, ym, ldy); break;
        case 4: Tile<4>(xm, K, wp, ym, ldy); break;
        case 3: Tile<3>(xm, K, wp, ym, ldy); break;
        case 2: Tile<2>(xm, K, wp, ym, ldy); break;
        default: Tile<1>(xm, K, wp, ym, ldy);
      }
    }
  }
}

// Chunks of panels handed out by an atomic counter. The calling thread takes chunks
// too, so the call finishes even when no pool thread is free; it then waits only for
// workers that started, and a late worker finds no chunk left (the state is shared,
// so it outlives the call).
struct Work {
  const float *x, *w;
  float* y;
  int64_t M, K, P, chunk;
  std::atomic<int64_t> next{0}, active{0};

  void Run() {
    for (int64_t c; (c = next.fetch_add(1)) * chunk < P;) {
      Panels(x, M, K, w, y, c * chunk, std::min(P, (c + 1) * chunk), P * kWidth);
    }
  }
};

constexpr int64_t kMinFmasPerThread = 1 << 21;  // below this, waking a thread costs more

ffi::Error SmallMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kWidth || wd[1] != xd[1] ||
      yd.size() != 2 || yd[0] != xd[0] || yd[1] != wd[0] * kWidth) {
    return ffi::Error::InvalidArgument(
        "act_small_matmul: want x [M, K], w [P, K, 32] and y [M, P * 32]");
  }
  auto work = std::make_shared<Work>();
  work->x = x.typed_data();
  work->w = w.typed_data();
  work->y = y->typed_data();
  work->M = xd[0];
  work->K = xd[1];
  work->P = wd[0];
  // A few rows cost about as much as 8 (streaming the panels dominates).
  const int64_t fmas = work->P * work->K * kWidth * std::max(work->M, kRows);
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(pool.num_threads(), fmas / kMinFmasPerThread));
  work->chunk = std::max<int64_t>(1, work->P / (4 * threads));
  for (int64_t t = 1; t < threads; ++t) {
    pool.Schedule([work] {
      work->active.fetch_add(1);
      work->Run();
      work->active.fetch_sub(1);
    });
  }
  work->Run();
  while (work->active.load() != 0) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ActSmallMatmul, SmallMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
