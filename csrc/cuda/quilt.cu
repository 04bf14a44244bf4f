// CUDA driver of image quilting, compiled at run time by NVRTC (obfgrad._native); the bodies
// are the CPU driver's (csrc/include/obfgrad/quilt.h), so the neighbours, the pick and the
// stitched pixels are bit-identical to the CPU's.
//
// Exact k-nearest-neighbour search in two kernels (obfgrad/ops/quilt.py launches them):
//   quilt_knn_tiled_kernel  grid (query blocks, database splits), one query per thread. Each
//       block stages tiles of its split's database rows in shared memory, dimension-major, and
//       every thread scores its query against OBF_KNN_ROWS rows at a time (a register block:
//       one query load and two float4 broadcasts feed 8 rows), with the canonical distance's
//       lanes and tree (quilt_lane_add / quilt_lane_total), so the distances are the CPU's to
//       the bit. Each thread keeps the running top-K of its query over its split, ordered by
//       (distance, index) as quilt_topk_insert orders it.
//   quilt_knn_merge_kernel  one thread per query merges the splits' lists: since each list is
//       the exact top-K of its rows under a total order, the merge is the exact top-K of the
//       database, ties to the smaller index, like the CPU's search.
// quilt_assemble_kernel: one thread per image (stitching is sequential in raster order);
// `stitch` selects the cut (obfgrad::QuiltStitch).
#include "obfgrad/quilt.h"

#define OBF_KNN_QUERIES 128      // threads per block, one query each (the launch must match)
#define OBF_KNN_ROWS 8           // database rows scored together by one thread
#define OBF_KNN_TILE_FLOATS 8192 // 32 KiB of shared memory: the largest dimension is 8192 / 8

// Canonical distances of one query (element j at query_t[j * stride]) to tile rows r0..r0+7
// (tile[j * tile_rows + r]; tile_rows and r0 are multiples of 8, so the float4 loads are
// aligned and every thread of the block reads the same address: a broadcast).
__device__ __forceinline__ void knn_score_rows(const float* query_t, long long stride, const float* tile,
                                               int tile_rows, int r0, int dim, float* dist) {
  float lane[OBF_KNN_ROWS][8];
#pragma unroll
  for (int r = 0; r < OBF_KNN_ROWS; ++r)
#pragma unroll
    for (int l = 0; l < 8; ++l) lane[r][l] = 0.f;
  int j = 0;
  for (; j + 8 <= dim; j += 8) {
#pragma unroll
    for (int l = 0; l < 8; ++l) {
      const float q = query_t[(long long)(j + l) * stride];
      const float4 lo = *reinterpret_cast<const float4*>(tile + (j + l) * tile_rows + r0);
      const float4 hi = *reinterpret_cast<const float4*>(tile + (j + l) * tile_rows + r0 + 4);
      obfgrad::quilt_lane_add(lane[0][l], q, lo.x);
      obfgrad::quilt_lane_add(lane[1][l], q, lo.y);
      obfgrad::quilt_lane_add(lane[2][l], q, lo.z);
      obfgrad::quilt_lane_add(lane[3][l], q, lo.w);
      obfgrad::quilt_lane_add(lane[4][l], q, hi.x);
      obfgrad::quilt_lane_add(lane[5][l], q, hi.y);
      obfgrad::quilt_lane_add(lane[6][l], q, hi.z);
      obfgrad::quilt_lane_add(lane[7][l], q, hi.w);
    }
  }
#pragma unroll
  for (int l = 0; l < 8; ++l) {  // the tail: element j + l goes to lane l, as in quilt_distance
    if (j + l >= dim) break;
    const float q = query_t[(long long)(j + l) * stride];
#pragma unroll
    for (int r = 0; r < OBF_KNN_ROWS; ++r) obfgrad::quilt_lane_add(lane[r][l], q, tile[(j + l) * tile_rows + r0 + r]);
  }
#pragma unroll
  for (int r = 0; r < OBF_KNN_ROWS; ++r) dist[r] = obfgrad::quilt_lane_total(lane[r]);
}

// Rows [start, start + rows) of the database into the tile, dimension-major; the rows up to the
// next multiple of OBF_KNN_ROWS are zero (scored, never inserted). All threads take part.
__device__ __forceinline__ void knn_stage_tile(float* tile, const float* database, long long start, int rows,
                                               int tile_rows, int dim) {
  const int padded = (rows + OBF_KNN_ROWS - 1) / OBF_KNN_ROWS * OBF_KNN_ROWS;
  for (int i = threadIdx.x; i < padded * dim; i += blockDim.x) {
    const int r = i / dim, j = i % dim;
    tile[j * tile_rows + r] = r < rows ? database[(start + r) * dim + j] : 0.f;
  }
}

// queries_t: (dim, num_queries), dimension-major. Block (x, y) takes queries
// [x * 128, x * 128 + 128) and database rows [y * rows_per_split, (y + 1) * rows_per_split); its
// lists go to part_*[(query * gridDim.y + y) * k + i].
extern "C" __global__ void __launch_bounds__(OBF_KNN_QUERIES)
    quilt_knn_tiled_kernel(const float* queries_t, const float* database, long long num_queries, long long num_db,
                           long long dim, long long k, long long rows_per_split, long long* part_index,
                           float* part_dist) {
  __shared__ float4 tile_storage[OBF_KNN_TILE_FLOATS / 4];
  float* tile = reinterpret_cast<float*>(tile_storage);
  const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const bool active = q < num_queries;
  const long long begin = (long long)blockIdx.y * rows_per_split;
  const long long end = begin + rows_per_split < num_db ? begin + rows_per_split : num_db;
  const int kk = (int)k, d = (int)dim;
  const int tile_rows = OBF_KNN_TILE_FLOATS / d / OBF_KNN_ROWS * OBF_KNN_ROWS;
  if (tile_rows == 0 || kk < 1) return;  // dim > 1024 or k < 1: refused by the Python side first
  const long long list = ((active ? q : 0) * gridDim.y + blockIdx.y) * k;
  float* top_dist = part_dist + list;
  long long* top_index = part_index + list;
  if (active) obfgrad::quilt_topk_reset(top_dist, top_index, kk);
  float worst = obfgrad::quilt_infinity();
  long long worst_index = 0x7fffffffffffffffLL;
  for (long long start = begin; start < end; start += tile_rows) {
    const int rows = (int)(end - start < tile_rows ? end - start : tile_rows);
    __syncthreads();  // every thread is done with the previous tile
    knn_stage_tile(tile, database, start, rows, tile_rows, d);
    __syncthreads();
    if (!active) continue;  // threads past the last query only help to stage tiles
    for (int r0 = 0; r0 < rows; r0 += OBF_KNN_ROWS) {
      float dist[OBF_KNN_ROWS];
      knn_score_rows(queries_t + q, num_queries, tile, tile_rows, r0, d, dist);
#pragma unroll
      for (int r = 0; r < OBF_KNN_ROWS; ++r) {
        const long long index = start + r0 + r;
        if (r0 + r < rows && obfgrad::quilt_before(dist[r], index, worst, worst_index)) {
          obfgrad::quilt_topk_insert(dist[r], index, top_dist, top_index, kk);
          worst = top_dist[kk - 1];
          worst_index = top_index[kk - 1];
        }
      }
    }
  }
}

// One thread per query: the exact top-K of the `splits` partial lists (empty slots are
// (+inf, INT64_MAX), which never enter a list).
extern "C" __global__ void quilt_knn_merge_kernel(const long long* part_index, const float* part_dist,
                                                  long long num_queries, long long splits, long long k,
                                                  long long* out_index, float* out_dist) {
  const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= num_queries) return;
  float* top_dist = out_dist + q * k;
  long long* top_index = out_index + q * k;
  obfgrad::quilt_topk_reset(top_dist, top_index, (int)k);
  for (long long i = 0; i < splits * k; ++i)
    obfgrad::quilt_topk_insert(part_dist[q * splits * k + i], part_index[q * splits * k + i], top_dist, top_index,
                               (int)k);
}

extern "C" __global__ void quilt_assemble_kernel(float* out, const float* database, const long long* neighbours,
                                                 long long batch, long long channels, long long height,
                                                 long long width, long long k, long long size, long long overlap,
                                                 long long seed, long long stitch) {
  long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= batch) return;
  int stride = (int)(size - overlap);
  int rows = (int)((height - size) / stride + 1), cols = (int)((width - size) / stride + 1);
  float* image = out + n * channels * height * width;
  for (long long i = 0; i < channels * height * width; ++i) image[i] = 0.f;
  obfgrad::quilt_assemble_image(image, (int)channels, (int)height, (int)width, database,
                                neighbours + n * (long long)rows * cols * k, (int)k, (int)size, (int)overlap, rows,
                                cols, (unsigned long long)seed, n, (int)stitch);
}
