// CUDA driver of image quilting, compiled at run time by NVRTC (obfgrad._native); the bodies
// are the CPU driver's (csrc/include/obfgrad/quilt.h), so the neighbours, the pick and the
// stitched pixels are bit-identical to the CPU's.
//
// quilt_knn_kernel: one thread per query scans the whole database (through shared-memory
// tiles) with the canonical distance and keeps its running top-K in its output row: a
// straightforward exact search with the CPU's result (the CPU's filter and pruning only
// speed up the same answer). Needs dim <= 8192 (patch sizes up to 16 with 3 channels).
// quilt_assemble_kernel: one thread per image (stitching is sequential in raster order);
// `stitch` selects the cut (obfgrad::QuiltStitch).
#include "obfgrad/quilt.h"

// Database rows are staged through shared memory in tiles (all threads of the block load a
// tile together), so each row is read from global memory once per block instead of once per
// query. Threads past the last query still help load, hence no early return.
#define OBF_QUILT_TILE_FLOATS 8192

extern "C" __global__ void quilt_knn_kernel(const float* queries, const float* database, long long num_queries,
                                            long long num_db, long long dim, long long k, long long* out_index,
                                            float* out_dist) {
  __shared__ float tile[OBF_QUILT_TILE_FLOATS];
  long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  bool active = q < num_queries;
  float* top_dist = out_dist + (active ? q : 0) * k;
  long long* top_index = out_index + (active ? q : 0) * k;
  const float* query = queries + (active ? q : 0) * dim;
  if (active) obfgrad::quilt_topk_reset(top_dist, top_index, (int)k);
  long long rows_per_tile = OBF_QUILT_TILE_FLOATS / dim;
  for (long long start = 0; start < num_db; start += rows_per_tile) {
    long long rows = num_db - start < rows_per_tile ? num_db - start : rows_per_tile;
    __syncthreads();  // the previous tile is no longer read
    for (long long i = threadIdx.x; i < rows * dim; i += blockDim.x) tile[i] = database[start * dim + i];
    __syncthreads();
    if (!active) continue;
    for (long long r = 0; r < rows; ++r) {
      float dist = obfgrad::quilt_distance(query, tile + r * dim, (int)dim);
      obfgrad::quilt_topk_insert(dist, start + r, top_dist, top_index, (int)k);
    }
  }
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
