/* cuBLAS stand-in: GemmEx as a double-precision host GEMM (16F/32F in,
 * 32F out, column-major, op N/T): the same operands as the real one, but
 * neither its accumulation order nor its tensor cores. */
#ifndef CUBLAS_EMU_H
#define CUBLAS_EMU_H
#include "cuda_emu.h"
typedef struct emu_blas *cublasHandle_t;
struct emu_blas { cudaStream_t stream = nullptr; };
typedef enum {
	CUBLAS_STATUS_SUCCESS = 0,
	CUBLAS_STATUS_NOT_INITIALIZED = 1,
	CUBLAS_STATUS_ALLOC_FAILED = 3,
	CUBLAS_STATUS_INVALID_VALUE = 7,
	CUBLAS_STATUS_ARCH_MISMATCH = 8,
	CUBLAS_STATUS_EXECUTION_FAILED = 13,
	CUBLAS_STATUS_INTERNAL_ERROR = 14,
	CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;
typedef enum { MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL } libraryPropertyType;
static inline cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = new emu_blas(); return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->stream = s; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasGetProperty(libraryPropertyType, int *v) { *v = 0; return CUBLAS_STATUS_SUCCESS; }
/* f16 bits -> double, exactly, without libm */
static inline double emu_h2d(unsigned short h)
{
	const int ex = (h >> 10) & 0x1f, man = h & 0x3ff;
	double v;
	if (ex == 31) {
		v = man ? NAN : INFINITY;
	} else if (ex) {
		uint64_t u = (uint64_t)(ex - 15 + 1023) << 52 | (uint64_t)man << 42;
		memcpy(&v, &u, 8);
	} else {
		v = man * 0x1p-24;
	}
	return (h & 0x8000) ? -v : v;
}
static inline double emu_ld(const void *p, cudaDataType t, size_t i)
{
	if (t == CUDA_R_32F)
		return ((const float *)p)[i];
	return emu_h2d(((const unsigned short *)p)[i]);
}
/* C = alpha op(A) op(B) + beta C, column-major: both operands are first
 * widened to double, row i of op(A) and column j of op(B) contiguous, then
 * each element is one double dot product (four partial sums), the columns
 * split over the emulator's host threads. */
static inline cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
	int m, int n, int k, const void *alpha, const void *A, cudaDataType at, int lda,
	const void *B, cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
	cublasComputeType_t, cublasGemmAlgo_t)
{
	if (ct != CUDA_R_32F || m < 1 || n < 1 || k < 1 || at != bt)
		return CUBLAS_STATUS_INVALID_VALUE;
	if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m)
		return CUBLAS_STATUS_INVALID_VALUE;
	const float al = *(const float *)alpha, be = *(const float *)beta;
	float *c = (float *)C;
	/* on the handle's stream, after what is queued there */
	emu::enqueue(h->stream, [=] {
	std::vector<double> a((size_t)m * k), b((size_t)n * k);
	for (int i = 0; i < m; i++)
		for (int l = 0; l < k; l++)
			a[(size_t)i * k + l] = emu_ld(A, at, ta ? (size_t)l + (size_t)i * lda
							       : (size_t)i + (size_t)l * lda);
	for (int j = 0; j < n; j++)
		for (int l = 0; l < k; l++)
			b[(size_t)j * k + l] = emu_ld(B, bt, tb ? (size_t)j + (size_t)l * ldb
							       : (size_t)l + (size_t)j * ldb);
	auto cols = [&](int j0, int j1) {
		for (int j = j0; j < j1; j++)
			for (int i = 0; i < m; i++) {
				const double *x = &a[(size_t)i * k], *y = &b[(size_t)j * k];
				double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
				int l = 0;
				for (; l + 4 <= k; l += 4) {
					s0 += x[l] * y[l];
					s1 += x[l + 1] * y[l + 1];
					s2 += x[l + 2] * y[l + 2];
					s3 += x[l + 3] * y[l + 3];
				}
				for (; l < k; l++)
					s0 += x[l] * y[l];
				const double s = (s0 + s1) + (s2 + s3);
				float prev = be != 0 ? c[i + (size_t)j * ldc] : 0.0f;
				c[i + (size_t)j * ldc] = (float)(al * s + be * prev);
			}
	};
	const double work = (double)m * n * k;
	unsigned nt = work < 1e7 ? 1 : emu::host_threads();
	if (nt > (unsigned)n)
		nt = (unsigned)n;
	std::vector<std::thread> ts;
	for (unsigned t = 1; t < nt; t++)
		ts.emplace_back(cols, (int)((long)n * t / nt), (int)((long)n * (t + 1) / nt));
	cols(0, (int)((long)n / nt));
	for (auto &th : ts)
		th.join();
	});
	return CUBLAS_STATUS_SUCCESS;
}
#endif
