// CUDA driver of image quilting, compiled at run time by NVRTC (obfgrad._native); the bodies
// are the CPU driver's (csrc/include/obfgrad/quilt.h), so the neighbours, the pick and the
// stitched pixels are bit-identical to the CPU's.
//
// quilt_knn_kernel: one thread per query scans the whole database with the canonical
// distance and keeps its running top-K in its output row (a straightforward exact search; the
// CPU's blocked filter is only a speed-up of the same result).
// quilt_assemble_kernel: one thread per image (stitching is sequential in raster order).
#include "obfgrad/quilt.h"

extern "C" __global__ void quilt_knn_kernel(const float* queries, const float* database, long long num_queries,
                                            long long num_db, long long dim, long long k, long long* out_index,
                                            float* out_dist) {
  long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= num_queries) return;
  float* top_dist = out_dist + q * k;
  long long* top_index = out_index + q * k;
  obfgrad::quilt_topk_reset(top_dist, top_index, (int)k);
  const float* query = queries + q * dim;
  for (long long row = 0; row < num_db; ++row) {
    float dist = obfgrad::quilt_distance(query, database + row * dim, (int)dim);
    obfgrad::quilt_topk_insert(dist, row, top_dist, top_index, (int)k);
  }
}

extern "C" __global__ void quilt_assemble_kernel(float* out, const float* database, const long long* neighbours,
                                                 long long batch, long long channels, long long height,
                                                 long long width, long long k, long long size, long long overlap,
                                                 long long seed) {
  long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= batch) return;
  int stride = (int)(size - overlap);
  int rows = (int)((height - size) / stride + 1), cols = (int)((width - size) / stride + 1);
  float* image = out + n * channels * height * width;
  for (long long i = 0; i < channels * height * width; ++i) image[i] = 0.f;
  obfgrad::quilt_assemble_image(image, (int)channels, (int)height, (int)width, database,
                                neighbours + n * (long long)rows * cols * k, (int)k, (int)size, (int)overlap, rows,
                                cols, (unsigned long long)seed, n);
}
