// Host emulation, for g++, of the CUDA features csrc/*.cu use (per-thread block state, static and dynamic shared
// memory, 3-D grids, <<<>>> launches, cooperative launches with grid.sync(), __ldcg, the few CUDA runtime calls the
// launchers make), so that their kernels run unchanged on the CPU:
// one std::thread per CUDA thread, real barriers for __syncthreads/__syncwarp, shuffles through a per-warp
// exchange, and a fake nvcuda::wmma whose fragment element order is a fixed random permutation (so code that
// assumes a layout breaks). Shared memory is a heap block of exactly the launch's size (AddressSanitizer
// sees overruns). WMMA pointer alignment and ldm rules are asserted.
#pragma once
#include <math.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cassert>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>
#include <pthread.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define __launch_bounds__(...)

namespace shim {

constexpr int kMaxThreads = 256;

struct BlockState {
  std::unique_ptr<std::barrier<>> block;
  std::unique_ptr<std::barrier<>> warp[kMaxThreads / 32];
  float exchange_f[kMaxThreads];
  const void* exchange_p[kMaxThreads][3];
  unsigned char* smem = nullptr;
  // Static __shared__ arrays, in the order the kernel declares them (host_source.py turns each declaration into a
  // static_shared<T>() call): one exact-size heap block each, so AddressSanitizer sees overruns.
  std::mutex statics_lock;
  std::vector<std::unique_ptr<unsigned char, void (*)(void*)>> statics;
};

// Per CUDA thread (one std::thread each): its block's state and indices. The grid barrier exists only during a
// cooperative launch, whose blocks all run at once.
inline thread_local BlockState* t_block = nullptr;
inline thread_local uint3 t_thread_idx;
inline thread_local uint3 t_block_idx;
inline thread_local size_t t_static_index = 0;  // this thread's next static __shared__ declaration
inline dim3 g_block_dim, g_grid_dim;
inline std::barrier<>* g_grid_barrier = nullptr;
inline std::atomic<long> g_grid_syncs{0};

inline void fail(const char* what) {
  fprintf(stderr, "SHIM FAILURE: %s\n", what);
  abort();
}

}  // namespace shim

#define threadIdx (shim::t_thread_idx)
#define blockIdx (shim::t_block_idx)
#define blockDim (shim::g_block_dim)
#define gridDim (shim::g_grid_dim)

namespace cooperative_groups {
struct grid_group {
  void sync() const {
    if (shim::g_grid_barrier == nullptr) shim::fail("grid.sync() outside a cooperative launch");
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) ++shim::g_grid_syncs;
    shim::g_grid_barrier->arrive_and_wait();
  }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups

// L1-bypassing load: a plain load here (the barriers order memory).
template <class T>
inline T shim_ldcg(const T* p) {
  return *p;
}
#define __ldcg shim_ldcg

inline void __syncthreads() { shim::t_block->block->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) shim::fail("partial-warp __syncwarp");
  shim::t_block->warp[threadIdx.x / 32]->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  if (mask != 0xffffffffu) shim::fail("partial-warp shuffle");
  shim::t_block->exchange_f[threadIdx.x] = v;
  __syncwarp();
  const float other = shim::t_block->exchange_f[(threadIdx.x & ~31u) | ((threadIdx.x & 31u) ^ lane_mask)];
  __syncwarp();
  return other;
}

// ------------------------------------------------------------------------------------------------ fake WMMA
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
// perm[use][lane * 8 + i] = logical index r * 16 + c of element i held by lane
inline const std::array<std::array<int, 256>, 3>& perms() {
  static const std::array<std::array<int, 256>, 3> table = [] {
    std::array<std::array<int, 256>, 3> t{};
    std::mt19937 rng(1234);
    for (auto& p : t) {
      for (int i = 0; i < 256; ++i) p[i] = i;
      std::shuffle(p.begin(), p.end(), rng);
    }
    return t;
  }();
  return table;
}
template <class Use>
constexpr int use_id() {
  return std::is_same_v<Use, matrix_a> ? 0 : std::is_same_v<Use, matrix_b> ? 1 : 2;
}
template <class Use>
inline int logical(int lane, int i) {
  return perms()[use_id<Use>()][lane * 8 + i];
}
template <class T>
inline void check_ptr(const T* p, unsigned ldm) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) shim::fail("WMMA pointer not 256-bit aligned");
  if ((ldm * sizeof(T)) % 16 != 0) shim::fail("WMMA ldm not a multiple of 16 bytes");
}
template <class T>
inline float f(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int num_elements = 8;
  T x[8];
};

template <class Use, class T, class L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& frag, T v) {
  for (int i = 0; i < 8; ++i) frag.x[i] = v;
}

// matrix_a (r, k) / matrix_b (k, c) with the fragment's own layout
template <class Use, class T, class L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& frag, const T* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>);
  detail::check_ptr(p, ldm);
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < 8; ++i) {
    const int e = detail::logical<Use>(lane, i), row = e / 16, col = e % 16;
    frag.x[i] = std::is_same_v<L, row_major> ? p[row * ldm + col] : p[col * ldm + row];
  }
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& frag, const float* p, unsigned ldm,
                             layout_t layout) {
  detail::check_ptr(p, ldm);
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < 8; ++i) {
    const int e = detail::logical<accumulator>(lane, i), row = e / 16, col = e % 16;
    frag.x[i] = layout == mem_row_major ? p[row * ldm + col] : p[col * ldm + row];
  }
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& frag, unsigned ldm,
                              layout_t layout) {
  detail::check_ptr(p, ldm);
  const int lane = threadIdx.x & 31;
  for (int i = 0; i < 8; ++i) {
    const int e = detail::logical<accumulator>(lane, i), row = e / 16, col = e % 16;
    (layout == mem_row_major ? p[row * ldm + col] : p[col * ldm + row]) = frag.x[i];
  }
}
template <class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  using FA = fragment<matrix_a, 16, 16, 16, T, LA>;
  using FB = fragment<matrix_b, 16, 16, 16, T, LB>;
  using FC = fragment<accumulator, 16, 16, 16, float>;
  auto* st = shim::t_block;
  const int lane = threadIdx.x & 31, base = threadIdx.x & ~31u;
  st->exchange_p[threadIdx.x][0] = &a;
  st->exchange_p[threadIdx.x][1] = &b;
  st->exchange_p[threadIdx.x][2] = &c;
  __syncwarp();
  float A[16][16], B[16][16], C[16][16];
  for (int l = 0; l < 32; ++l) {
    const FA* fa = static_cast<const FA*>(st->exchange_p[base + l][0]);
    const FB* fb = static_cast<const FB*>(st->exchange_p[base + l][1]);
    const FC* fc = static_cast<const FC*>(st->exchange_p[base + l][2]);
    for (int i = 0; i < 8; ++i) {
      int e = detail::logical<matrix_a>(l, i);
      A[e / 16][e % 16] = detail::f(fa->x[i]);
      e = detail::logical<matrix_b>(l, i);
      B[e / 16][e % 16] = detail::f(fb->x[i]);
      e = detail::logical<accumulator>(l, i);
      C[e / 16][e % 16] = fc->x[i];
    }
  }
  float out[8];
  for (int i = 0; i < 8; ++i) {
    const int e = detail::logical<accumulator>(lane, i), row = e / 16, col = e % 16;
    float acc = C[row][col];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    out[i] = acc;
  }
  __syncwarp();  // every lane has read a, b, c before any d (possibly aliasing c) changes
  for (int i = 0; i < 8; ++i) d.x[i] = out[i];
}
}  // namespace wmma
}  // namespace nvcuda

namespace shim {

inline std::atomic<long> g_launches{0}, g_coop_launches{0};
inline unsigned g_last_grid[2] = {0, 0};
inline size_t g_max_smem = 0;

inline std::unique_ptr<BlockState, void (*)(BlockState*)> make_block(unsigned threads, size_t smem_bytes) {
  auto* st = new BlockState;
  st->block = std::make_unique<std::barrier<>>(threads);
  for (unsigned w = 0; w < threads / 32; ++w) st->warp[w] = std::make_unique<std::barrier<>>(32);
  if (smem_bytes % 128 != 0) fail("shared memory size not a multiple of 128");
  // Exactly the launch's dynamic shared memory (ASan catches overruns), filled with NaN-ish garbage.
  st->smem = static_cast<unsigned char*>(std::aligned_alloc(128, smem_bytes > 0 ? smem_bytes : 128));
  memset(st->smem, 0xff, smem_bytes);
  return {st, [](BlockState* b) {
            free(b->smem);
            delete b;
          }};
}

template <class Params>
struct ThreadArgs {
  void (*kernel)(Params);
  const Params* p;
  BlockState* block;
  uint3 block_idx, thread_idx;
};

template <class Params>
void* thread_main(void* raw) {
  auto* a = static_cast<ThreadArgs<Params>*>(raw);
  t_block = a->block;
  t_block_idx = a->block_idx;
  t_thread_idx = a->thread_idx;
  t_static_index = 0;
  a->kernel(*a->p);
  return nullptr;
}

// Runs `count` blocks' threads at once (small stacks: a cooperative grid has thousands of threads).
template <class Params>
void run_blocks(void (*kernel)(Params), const std::vector<uint3>& blocks, unsigned threads, size_t smem_bytes,
                const Params& p) {
  std::vector<std::unique_ptr<BlockState, void (*)(BlockState*)>> states;
  std::vector<ThreadArgs<Params>> args;
  args.reserve(blocks.size() * threads);
  for (const uint3& b : blocks) {
    states.push_back(make_block(threads, smem_bytes));
    for (unsigned t = 0; t < threads; ++t) args.push_back({kernel, &p, states.back().get(), b, uint3{t, 0, 0}});
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 20);
  std::vector<pthread_t> pool(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (pthread_create(&pool[i], &attr, thread_main<Params>, &args[i]) != 0) fail("pthread_create");
  }
  for (pthread_t& th : pool) pthread_join(th, nullptr);
  pthread_attr_destroy(&attr);
}

// Ordinary launch: blocks one at a time, in a shuffled order (no block may depend on another's progress).
// Cooperative: every block's threads at once, with a grid-wide barrier for grid.sync().
template <class Params>
void launch(void (*kernel)(Params), dim3 grid, unsigned threads, size_t smem_bytes, const Params& p, bool cooperative) {
  if (threads > kMaxThreads) fail("too many threads per block");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("bad grid");
  ++g_launches;
  g_last_grid[0] = grid.x;
  g_last_grid[1] = grid.y;
  g_max_smem = std::max(g_max_smem, smem_bytes);
  g_grid_dim = grid;
  g_block_dim = dim3(threads, 1, 1);
  std::vector<uint3> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
  if (cooperative) {
    ++g_coop_launches;
    std::barrier<> grid_barrier(static_cast<std::ptrdiff_t>(blocks.size() * threads));
    g_grid_barrier = &grid_barrier;
    run_blocks(kernel, blocks, threads, smem_bytes, p);
    g_grid_barrier = nullptr;
  } else {
    static std::mt19937 rng(99);
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (const uint3& b : blocks) run_blocks(kernel, {b}, threads, smem_bytes, p);
  }
}

}  // namespace shim

namespace shim {

// `__shared__ T name[N]...;` inside a kernel: every thread of the block gets the same array (its k-th declaration).
template <class T>
T& static_shared() {
  BlockState* block = t_block;
  const size_t index = t_static_index++;
  std::lock_guard<std::mutex> guard(block->statics_lock);
  while (block->statics.size() <= index) block->statics.emplace_back(nullptr, free);
  if (!block->statics[index]) {
    void* data = nullptr;  // posix_memalign: the exact size (AddressSanitizer checks it), 128-byte aligned
    if (posix_memalign(&data, 128, sizeof(T)) != 0) fail("posix_memalign");
    memset(data, 0xff, sizeof(T));  // garbage, as on the GPU
    block->statics[index].reset(static_cast<unsigned char*>(data));
  }
  return *reinterpret_cast<T*>(block->statics[index].get());
}

// `kernel<<<grid, block, smem, stream>>>(p)`: a 1-D block of threads, an ordinary launch.
template <class Params>
void launch_cfg(void (*kernel)(Params), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t, const Params& p) {
  if (block.y != 1 || block.z != 1) fail("2-D or 3-D thread blocks are not emulated");
  launch(kernel, grid, block.x, smem_bytes, p, false);
}

}  // namespace shim

// cuda_runtime.h's typed overloads exist only under nvcc: the launchers pass kernels (function pointers) directly.
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, enum cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
