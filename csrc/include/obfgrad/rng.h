// Counter-based random numbers: Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011). The output is a pure function of
// (seed, counter), so a kernel that draws the random number for element i as
// philox(seed, i) gives the same result on the CPU and the GPU, in any thread order.
#pragma once

#include "obfgrad/common.h"

namespace obfgrad {

struct Philox4x32 {
  unsigned int v[4];
};

// Round constants from the paper (Table 2 / Random123's philox.h defaults).
#define OBF_PHILOX_M0 0xD2511F53u
#define OBF_PHILOX_M1 0xCD9E8D57u
#define OBF_PHILOX_W0 0x9E3779B9u
#define OBF_PHILOX_W1 0xBB67AE85u

OBF_HD void mulhilo32(unsigned int a, unsigned int b, unsigned int* hi, unsigned int* lo) {
  unsigned long long product = (unsigned long long)a * (unsigned long long)b;
  *hi = (unsigned int)(product >> 32);
  *lo = (unsigned int)product;
}

// Ten rounds of Philox4x32 on a 128-bit counter with a 64-bit key.
OBF_HD Philox4x32 philox4x32(unsigned long long seed, unsigned long long counter_lo,
                             unsigned long long counter_hi) {
  unsigned int c0 = (unsigned int)counter_lo, c1 = (unsigned int)(counter_lo >> 32);
  unsigned int c2 = (unsigned int)counter_hi, c3 = (unsigned int)(counter_hi >> 32);
  unsigned int k0 = (unsigned int)seed, k1 = (unsigned int)(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    unsigned int hi0, lo0, hi1, lo1;
    mulhilo32(OBF_PHILOX_M0, c0, &hi0, &lo0);
    mulhilo32(OBF_PHILOX_M1, c2, &hi1, &lo1);
    unsigned int n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += OBF_PHILOX_W0;
    k1 += OBF_PHILOX_W1;
  }
  Philox4x32 out;
  out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
  return out;
}

// A uniform float in [0, 1) from the top 24 bits of a 32-bit draw (exact in float32).
OBF_HD float uniform01(unsigned int bits) { return (float)(bits >> 8) * (1.0f / 16777216.0f); }

// The i-th uniform of stream `stream` under `seed`: element i of a kernel uses counter i.
OBF_HD float philox_uniform(unsigned long long seed, unsigned long long stream, unsigned long long i) {
  return uniform01(philox4x32(seed, i, stream).v[0]);
}

}  // namespace obfgrad
