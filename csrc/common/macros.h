// Portability macros for code shared by the CPU (.cpp) and CUDA (.cu) kernels.
// No torch types may appear in csrc/common/.
#pragma once

#if defined(__CUDACC__)
#define DNMP_HD __host__ __device__ __forceinline__
#else
#define DNMP_HD inline
#endif
