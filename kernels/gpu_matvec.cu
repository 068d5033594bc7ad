/*
 * gpu_matvec.cu - the decode path: fused dequantise + matrix-vector for
 * B = 1..8 tokens, straight from the quantized bytes, for Q2_K, Q3_K, Q4_K,
 * Q5_K, Q6_K, Q8_0, Q4_0 and MXFP4, with gate and up computed together and
 * their SwiGLU applied in the same kernel.
 *
 * Decode is a stream over the expert's bytes: 8.5 MB of Q2_K/Q3_K for a
 * GLM-4.7 expert, read once, ~2.6-3.4 bits per weight. At an H100's 3 TB/s
 * that is ~9e12 weights/s, which leaves about 3.5 instructions per weight
 * for everything: dequantisation, the multiply-adds, the loads. Two
 * decisions follow from that count.
 *
 * 1. The arithmetic is integer. Turning each 2-bit quant into a float costs
 *    two or three instructions before the multiply-add; instead the input is
 *    prepared once per call (prep_kernel) and the dot products are __dp4a,
 *    four quants x four input bytes per instruction, with the block scales
 *    taken out of the sums (value = A q - M, so sum = A (q . x) - M sum(x)).
 *    To keep f32 accuracy, each block of 32 inputs is written as
 *    s * X with s a power of two and X an integer of 22 bits and a sign
 *    (|X| <= 2^22: each element rounded to within 2^-23 of the block's
 *    largest magnitude, about what f32 rounding of the block's largest
 *    element would do), and X is split into three signed base-256 digits;
 *    a 32-element group costs 24 __dp4a, whose int32 sums are exact, then a
 *    few float operations. The sums across groups are f32. Against the C
 *    reference (double dots over f32 weights) the relative L2 error is
 *    ~1e-7; tests/t_gpu_kernels holds it to 1e-5.
 *
 * 2. The bytes travel coalesced. Blocks are 17 to 210 bytes, mostly not a
 *    multiple of 4, so a lane that reads "its" block reads a word here and a
 *    word 84 bytes further on, and each warp load touches a dozen cache
 *    lines: the L1 runs out long before DRAM does. So a CTA copies a tile of
 *    rows x a chunk of blocks into shared memory with 4-byte cp.async
 *    (a warp per row, consecutive lanes on consecutive words, the ragged
 *    first and last word of a row's chunk whole where they lie inside the
 *    matrix), double-buffered so that one chunk is in flight while the
 *    previous is computed, and threads decode from shared memory. A row's
 *    chunk is only 300-600 bytes (a 32-row tile in ~20 KB), so what a
 *    warp does per row counts about as much as the decoding: a lane's
 *    copies of a row go in one group of LDGSTS at fixed offsets, and what
 *    every row shares is worked out once a tile (mv_load). A row's slot
 *    starts at the 4-byte word holding its first byte and is an odd number
 *    of words long, so lanes reading the same field of 32 different rows
 *    hit 32 different banks. `make ptx-loops` counts these loops in the
 *    sm_90 machine code.
 *
 * Threads: 128 per CTA; a tile is tr = 32, 16 or 8 rows (fewer rows, more
 * CTAs, when the launch would not fill the device twice over); thread t
 * takes row t % tr and every (128/tr)-th unit of the chunk, a unit being
 * 32 to 128 elements of one block that share their packed bits (128/tr is
 * a multiple of the units per block, so a thread's units are all the same
 * unit of their blocks, and its scales' and bits' positions are fixed).
 * Lanes of a warp work on the same columns of different rows, so the
 * prepared input they read is one address per warp (one cache
 * transaction, broadcast).
 * At the end the k-slices of each row are summed through shared memory in
 * a fixed order (the result does not depend on timing), and the pair kernel
 * writes h = silu(g) * u computed in double from the two f32 dots, as
 * kernels/ffn.c does.
 *
 * The pointers of up to 32 experts of one type are passed by value: one
 * launch serves a decode step's 8 routed experts, blockIdx.y picks the
 * expert.
 *
 * 8-bit activations (msg_prep_launch with q8, the kernels' NP = 1): the
 * same kernels with one digit plane instead of three, as ggml's q8_1 and
 * MMVQ do: each block of 32 inputs is q * d with d = amax / 127 and q =
 * rint(x / d) in -127..127, so a 32-element group costs 8 __dp4a instead
 * of 24 and the prepared block is 48 bytes instead of 112 (three aligned
 * 16-byte loads). The min terms keep using d * sum(q) of each half, so the
 * result is the exact product with the rounded input (up to the f32 sums):
 * per element an error uniform in +-d/2, an RMS of amax / (127 sqrt 12) =
 * amax x 2.3e-3, and a dot product's relative error is about that over
 * the input's RMS: ~5e-3 for normal-ish inputs (amax ~2.3 sigma in a block
 * of 32), at most 1.3e-2 (amax <= sqrt(32) x RMS). tests/t_gpu_kernels
 * measures it against the float64 reference and holds it to its bound.
 *
 * Split-K: a launch with fewer CTAs than one wave (4 per multiprocessor,
 * what __launch_bounds__ asks for) even at 8-row tiles, such as one
 * expert's 1536 gate rows, splits each row's blocks into S contiguous
 * ranges (S CTAs per tile, blockIdx.x = range * tiles + tile), as long as
 * every range keeps each k-slice busy. Each CTA writes its range's sums to
 * a workspace the caller provides and counts itself in its tile's counter;
 * the tile's last CTA to finish adds the S partials in range order and
 * applies the SwiGLU, then sets the counter back to zero for the next
 * launch. One launch, no second kernel (a decode step's small products,
 * k and v, a shared expert, are a node each in its graph, not two); the
 * result does not depend on timing or on which CTA is last, and differs
 * from the unsplit one by the reassociation of f32 sums only.
 *
 * Not done: 16-byte cp.async for the weight tiles. A 16-byte copy needs the
 * slot to sit at the source's address modulo 16, so slots would be a
 * multiple of 4 words apart, and the 4-byte reads the formats make from
 * shared memory (lanes = 32 rows) would then hit 8 banks, not 32; doing
 * it well means 16-byte shared reads in every format's load(), which is a
 * rewrite of each Fmt, left for a measured GPU session.
 */
#include <limits.h>
#include <stdint.h>

#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include "gpu_internal.cuh"
#include "gpu_prep.cuh"
#include "gpu_quant.cuh"

using namespace msq;

namespace {

constexpr int MV_THREADS = 128;
/* a lane's copies of a row in one group (mv_copy_words): 6 covers a 32-row
 * tile's rows of one matrix (~160 words) in one. In sm_90 machine code: 23
 * instructions a group of 6, 19 of 4, 27 of 8 (and at 8 ptxas gives
 * Q4_K's single-matrix unit loop 136 instructions for 118) */
constexpr int MV_CP_GROUP = 6;

/* ---- the prepared input -------------------------------------------------- */

/* One warp per block of 32 elements (gpu_prep.cuh's prep_block); in2: the
 * pair's h = silu(in) * in2 in double, as the pair kernel computes it. */
template <int NP>
__global__ void __launch_bounds__(256)
prep_kernel(const float *__restrict__ in, const float *__restrict__ in2,
	    int64_t in_stride, XBlk<NP> *__restrict__ out, int n, int B,
	    int64_t n_warps)
{
	msg_grid_wait();
	const int lane = threadIdx.x & 31;
	const int64_t gw =
		((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
	if (gw >= n_warps) /* whole warps: blockDim is a multiple of 32 */
		return;
	const int nxb = n / 32;
	const int64_t per_set = (int64_t)B * nxb;
	const int64_t set = gw / per_set, rem = gw % per_set;
	const int64_t idx = set * in_stride + (rem / nxb) * (int64_t)n +
			    (rem % nxb) * 32 + lane;
	float v;
	if (in2) {
		const double g = in[idx], u = in2[idx];
		v = (float)(g / (1.0 + exp(-g)) * u);
	} else {
		v = in[idx];
	}
	prep_block<NP>(v, out + gw); /* gw runs over [set][token][block] */
}

/* The prepared block, in registers: p[plane][word], word w = elements
 * 4w..4w+3. */
template <int NP> struct XDig {
	int p[NP][8];
	float s, s0, s1;
};

/* 2 NP + 1 aligned 16-byte loads. */
template <int NP>
__device__ __forceinline__ void ld_x(const XBlk<NP> *x, XDig<NP> &d)
{
	const int4 *v = (const int4 *)x;
#pragma unroll
	for (int k = 0; k < 2 * NP; k++) {
		const int4 t = __ldg(v + k);
		int *o = d.p[k >> 1] + 4 * (k & 1);
		o[0] = t.x;
		o[1] = t.y;
		o[2] = t.z;
		o[3] = t.w;
	}
	const float4 m = __ldg((const float4 *)(v + 2 * NP));
	d.s = m.x;
	d.s0 = m.y;
	d.s1 = m.z;
}

/* ---- the formats, as the matvec reads them --------------------------- */

/* 32 weights decoded: q[w] holds elements 4w..4w+3 as int8 (0..63
 * unsigned or signed); element value = A q - M, A/M of elements 0..15 in
 * A0/M0 and of 16..31 in A1/M1. */
struct Sub {
	uint32_t q[8];
	float A0, A1, M0, M1;
};

/* 4 bytes at byte offset bo + 4 wo of a shared-memory row slot: the word
 * and the shift come from bo alone, once per unit, and each load is one
 * (A4) or two shared loads at an offset the compiler folds in. A4: bo is a
 * multiple of 4 (the type's blocks and rows are, and so are their base
 * pointers). */
template <bool A4>
__device__ __forceinline__ uint32_t ldw(const uint32_t *s, int bo, int wo)
{
	const uint32_t *p = s + (bo >> 2) + wo;
	if (A4)
		return p[0];
	return __funnelshift_r(p[0], p[1], (bo & 3) * 8);
}

/* Byte i (0..11) of three words, without indexing a register array with a
 * run-time value (which would send it to local memory). */
__device__ __forceinline__ uint32_t byte3(const uint32_t (&w)[3], int i)
{
	const uint32_t v = i < 4 ? w[0] : i < 8 ? w[1] : w[2];
	return (v >> (8 * (i & 3))) & 0xffu;
}

/* Bit `from` (0..7) of each byte of w moved to bit `to` of the same byte
 * (other bits anywhere: the caller masks): a rotation right by from - to,
 * mod 32, whose wrap-around only ever carries byte 0's bits to byte 3's
 * and back, not across the bits kept. Q3_K/Q5_K/Q6_K's high bits. */
__device__ __forceinline__ uint32_t bytes_bit_to(uint32_t w, int from, int to)
{
	return __funnelshift_r(w, w, (from - to) & 31);
}

/* Q4_K/Q5_K's 6-bit scale and min of group g from the 12 packed bytes. */
__device__ __forceinline__ void k4_scale_min(const uint32_t (&w)[3], int g,
					     int &sc, int &mn)
{
	if (g < 4) {
		sc = byte3(w, g) & 63;
		mn = byte3(w, g + 4) & 63;
	} else {
		sc = (byte3(w, g + 4) & 0xf) | (byte3(w, g - 4) >> 6) << 4;
		mn = (byte3(w, g + 4) >> 4) | (byte3(w, g) >> 6) << 4;
	}
}

/*
 * Each format: QK, BS, the unit (elements of one block decoded from one
 * Raw: UPB units per block, NSUB sub-blocks of 32 each), ALIGN (what its
 * base pointers must be aligned to), load() a unit's bytes from a slot,
 * sub() sub-block s of it, xblk() that sub-block's 32-element block within
 * the QK-block. The layouts are kernels/dequant.c's (the comments there say
 * where each bit lives).
 */
template <int T> struct Fmt;

/* Q2_K's and Q3_K's 2-bit fields of sub-block s (bits 2s, 2s + 1 of each
 * byte), placed at bits pos, pos + 1: pos = 2s masks them where they lie,
 * pos = 2s - 2 takes them from the bytes shifted down by 2 (one operation a
 * word, and the shift is shared between the sub-blocks that use it). The
 * word is then the field times 2^pos; k2_unit(pos) = 2^-pos goes into the
 * block's d, exactly (d is an f16 value: no underflow), so A x.s is 2^-pos
 * times the plain one and the dot 2^pos times the plain one: the same
 * bits. (The three-digit sums stay as exact in f32: they are multiples of
 * 2^pos.) */
__device__ __forceinline__ uint32_t k2_field(uint32_t w, int s, int pos)
{
	return (pos == 2 * s ? w : w >> 2) & (0x03030303u << pos);
}

__device__ __forceinline__ float k2_unit(int pos)
{
	return pos == 0 ? 1.0f : pos == 2 ? 0.25f : 0.0625f;
}

/* Q2_K, 84 B: scales[16] @0, qs[64] @16, d @80, dmin @82. Unit = half h
 * (128 elements: qs[32h .. 32h+31], scales[8h .. 8h+7]); sub-block j takes
 * bits 2j of those 32 bytes: groups 8h + 2j (bytes 0..15) and 8h + 2j + 1
 * (bytes 16..31). */
template <> struct Fmt<MS_TYPE_Q2_K> {
	static constexpr int QK = 256, BS = 84, UPB = 2, NSUB = 4, ALIGN = 4;
	static constexpr bool A4 = true;
	/* UQ: q is never negative (the dot reads it as unsigned bytes) */
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t qs[8], sc[2];
		float d, dmin;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int u)
	{
#pragma unroll
		for (int w = 0; w < 8; w++)
			r.qs[w] = ldw<A4>(s, bo, 4 + 8 * u + w);
		r.sc[0] = ldw<A4>(s, bo, 2 * u);
		r.sc[1] = ldw<A4>(s, bo, 2 * u + 1);
		const uint32_t dm = ldw<A4>(s, bo, 20);
		r.d = f16_f32_hw(dm & 0xffffu);
		r.dmin = f16_f32_hw(dm >> 16);
	}
	static __device__ __forceinline__ int xblk(int u, int s)
	{
		return 4 * u + s;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int, int s,
						   Sub &o)
	{
		/* pos = 0, 2, 4, 4: three of the four masked in place */
		const int pos = s < 2 ? 2 * s : 4;
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = k2_field(r.qs[w], s, pos);
		const float d = r.d * k2_unit(pos);
		const uint32_t b = (s < 2 ? r.sc[0] : r.sc[1]) >> (16 * (s & 1));
		const uint32_t b0 = b & 0xffu, b1 = (b >> 8) & 0xffu;
		o.A0 = d * (float)(b0 & 0xf);
		o.M0 = r.dmin * (float)(b0 >> 4);
		o.A1 = d * (float)(b1 & 0xf);
		o.M1 = r.dmin * (float)(b1 >> 4);
	}
};

/* Q3_K, 110 B: hmask[32] @0, qs[64] @32, scales[12] @96, d @108. Unit =
 * half h as Q2_K; the third bit of sub-block j is bit 4h + j of hmask
 * (bytes 0..15 for the first group, 16..31 for the second), a clear bit
 * subtracting 4: q' = q2 | hbit << 2 in 0..7, value d (s - 32) (q' - 4). */
template <> struct Fmt<MS_TYPE_Q3_K> {
	static constexpr int QK = 256, BS = 110, UPB = 2, NSUB = 4, ALIGN = 2;
	static constexpr bool A4 = false;
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t qs[8], hm[8], sc[2];
		float d;
	};
	/* The half's 8 six-bit scales, groups 8u + j, as bytes j of sc[j / 4]
	 * (0..63, not yet minus 32), four at a time: group g's low nibble is
	 * the nibble u of byte j of scales[0..7], its high two bits are bits
	 * 2 (g / 4) of byte 8 + j % 4, and g / 4 is 2u for j < 4, 2u + 1
	 * above. */
	static __device__ __forceinline__ void scales(Raw &r, const uint32_t *s,
						      int bo, int u)
	{
		const uint32_t w0 = ldw<A4>(s, bo, 24), w1 = ldw<A4>(s, bo, 25);
		const uint32_t hi = ldw<A4>(s, bo, 26) >> (4 * u);
		r.sc[0] = ((w0 >> (4 * u)) & 0x0f0f0f0fu) |
			  ((hi << 4) & 0x30303030u);
		r.sc[1] = ((w1 >> (4 * u)) & 0x0f0f0f0fu) |
			  ((hi << 2) & 0x30303030u);
	}
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int u)
	{
#pragma unroll
		for (int w = 0; w < 8; w++) {
			r.qs[w] = ldw<A4>(s, bo, 8 + 8 * u + w);
			r.hm[w] = ldw<A4>(s, bo, w);
		}
		scales(r, s, bo, u);
		r.d = f16_f32_hw(ldw<A4>(s, bo, 27) & 0xffffu);
	}
	static __device__ __forceinline__ int xblk(int u, int s)
	{
		return 4 * u + s;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int u, int s,
						   Sub &o)
	{
		/* the 2-bit field at pos = 0, 2, 2, 4 (fields 0 and 1 masked
		 * where they lie, 2 and 3 from the bytes shifted down by 2),
		 * hmask bit 4u + s of each byte just above it: it moves by 4u
		 * - 2 for s = 0 and 2, by 4u - 3 for 1 and 3, so two rotations
		 * of a word serve the four sub-blocks */
		const int pos = s == 0 ? 0 : s == 3 ? 4 : 2, hp = pos + 2;
		const uint32_t hm = 0x01010101u << hp;
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = k2_field(r.qs[w], s, pos) |
				 (bytes_bit_to(r.hm[w], 4 * u + s, hp) & hm);
		const float d = r.d * k2_unit(pos), m = 4.0f / k2_unit(pos);
		/* groups 2s, 2s + 1: bytes 2s % 4, + 1 of sc[s / 2]; the
		 * scale minus 32 is a small integer, exact as a float either
		 * way */
		const uint32_t b = r.sc[s >> 1] >> (16 * (s & 1));
		o.A0 = d * ((float)(b & 0xffu) - 32.0f);
		o.A1 = d * ((float)((b >> 8) & 0xffu) - 32.0f);
		o.M0 = m * o.A0; /* 4 times the plain A: a power of two */
		o.M1 = m * o.A1;
	}
};

/* Q4_K, 144 B: d @0, dmin @2, scales[12] @4, qs[128] @16. Unit = the pair
 * p of groups 2p (low nibbles) and 2p + 1 (high nibbles) of qs[32p ..]. */
template <> struct Fmt<MS_TYPE_Q4_K> {
	static constexpr int QK = 256, BS = 144, UPB = 4, NSUB = 2, ALIGN = 4;
	static constexpr bool A4 = true;
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t qs[8], sc[3];
		float d, dmin;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int u)
	{
#pragma unroll
		for (int w = 0; w < 8; w++)
			r.qs[w] = ldw<A4>(s, bo, 4 + 8 * u + w);
#pragma unroll
		for (int i = 0; i < 3; i++)
			r.sc[i] = ldw<A4>(s, bo, 1 + i);
		const uint32_t dm = ldw<A4>(s, bo, 0);
		r.d = f16_f32_hw(dm & 0xffffu);
		r.dmin = f16_f32_hw(dm >> 16);
	}
	static __device__ __forceinline__ int xblk(int u, int s)
	{
		return 2 * u + s;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int u, int s,
						   Sub &o)
	{
		/* the high nibbles masked where they lie (q x 16, read as
		 * unsigned bytes), the 1/16 in d: exactly, as Q2_K's fields */
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = r.qs[w] & (s ? 0xf0f0f0f0u : 0x0f0f0f0fu);
		int sc, mn;
		k4_scale_min(r.sc, 2 * u + s, sc, mn);
		o.A0 = o.A1 = r.d * (s ? 0.0625f : 1.0f) * (float)sc;
		o.M0 = o.M1 = r.dmin * (float)mn;
	}
};

/* Q5_K, 176 B: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48. As
 * Q4_K plus bit g of qh[l], worth 16. */
template <> struct Fmt<MS_TYPE_Q5_K> {
	static constexpr int QK = 256, BS = 176, UPB = 4, NSUB = 2, ALIGN = 4;
	static constexpr bool A4 = true;
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t qs[8], qh[8], sc[3];
		float d, dmin;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int u)
	{
#pragma unroll
		for (int w = 0; w < 8; w++) {
			r.qs[w] = ldw<A4>(s, bo, 12 + 8 * u + w);
			r.qh[w] = ldw<A4>(s, bo, 4 + w);
		}
#pragma unroll
		for (int i = 0; i < 3; i++)
			r.sc[i] = ldw<A4>(s, bo, 1 + i);
		const uint32_t dm = ldw<A4>(s, bo, 0);
		r.d = f16_f32_hw(dm & 0xffffu);
		r.dmin = f16_f32_hw(dm >> 16);
	}
	static __device__ __forceinline__ int xblk(int u, int s)
	{
		return 2 * u + s;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int u, int s,
						   Sub &o)
	{
		const int g = 2 * u + s;
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = ((r.qs[w] >> (4 * s)) & 0x0f0f0f0fu) |
				 (bytes_bit_to(r.qh[w], g, 4) & 0x10101010u);
		int sc, mn;
		k4_scale_min(r.sc, g, sc, mn);
		o.A0 = o.A1 = r.d * (float)sc;
		o.M0 = o.M1 = r.dmin * (float)mn;
	}
};

/* Q6_K, 210 B: ql[128] @0, qh[64] @128, int8 scales[16] @192, d @208.
 * Unit u = (half h = u / 2, c = u % 2): ql[64h + 32c ..] (its low nibbles
 * are quarter r = c, its high nibbles quarter r = c + 2) and qh[32h ..]
 * (bits 2r); sub-block s is quarter r = c + 2s, stored + 32. */
template <> struct Fmt<MS_TYPE_Q6_K> {
	static constexpr int QK = 256, BS = 210, UPB = 4, NSUB = 2, ALIGN = 2;
	static constexpr bool A4 = false;
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t ql[8], qh[8], sc[2];
		float d;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int u)
	{
		const int h = u >> 1, c = u & 1;
#pragma unroll
		for (int w = 0; w < 8; w++) {
			r.ql[w] = ldw<A4>(s, bo, 16 * h + 8 * c + w);
			r.qh[w] = ldw<A4>(s, bo, 32 + 8 * h + w);
		}
		r.sc[0] = ldw<A4>(s, bo, 48 + 2 * h);
		r.sc[1] = ldw<A4>(s, bo, 49 + 2 * h);
		r.d = f16_f32_hw(ldw<A4>(s, bo, 52) & 0xffffu);
	}
	static __device__ __forceinline__ int xblk(int u, int s)
	{
		return 4 * (u >> 1) + (u & 1) + 2 * s;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int u, int s,
						   Sub &o)
	{
		const int c = u & 1, rq = c + 2 * s;
		/* the 6-bit q = nibble + 16 x (qh bits 2rq, 2rq + 1), times
		 * 2^k: s = 0 (low nibbles, in place), k = 0: qh's bits moved
		 * to 4, 5; s = 1 (high nibbles), k = 2c: qh's bits 2c + 4,
		 * 2c + 5 left where they lie and the nibble shifted down to
		 * just below them (4 - 2c), one shift a word either way.
		 * 2^-k goes into d, exactly, as Q2_K's fields. */
		const int k = s ? 2 * c : 0;
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = s ? ((r.ql[w] >> (4 - k)) & (0x0f0f0f0fu << k)) |
					     (r.qh[w] & (0x30303030u << k))
				   : (r.ql[w] & 0x0f0f0f0fu) |
					     (bytes_bit_to(r.qh[w], 2 * rq, 4) &
					      0x30303030u);
		/* scales 8h + 2rq + k = byte 2c + k of word s of the half's 8 */
		const uint32_t b = (s ? r.sc[1] : r.sc[0]) >> (16 * c);
		const float d = r.d * (k ? 0.25f : 1.0f);
		o.A0 = d * (float)(int8_t)(b & 0xffu);
		o.A1 = d * (float)(int8_t)((b >> 8) & 0xffu);
		o.M0 = (k ? 128.0f : 32.0f) * o.A0; /* 32 x the plain A */
		o.M1 = (k ? 128.0f : 32.0f) * o.A1;
	}
};

/* Q8_0, 34 B: f16 d; int8 qs[32]. */
template <> struct Fmt<MS_TYPE_Q8_0> {
	static constexpr int QK = 32, BS = 34, UPB = 1, NSUB = 1, ALIGN = 2;
	static constexpr bool A4 = false;
	static constexpr bool UQ = false;
	struct Raw {
		uint32_t qs[8];
		float d;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int)
	{
		r.d = f16_f32_hw(ldw<A4>(s, bo, 0) & 0xffffu);
#pragma unroll
		for (int w = 0; w < 8; w++)
			r.qs[w] = ldw<A4>(s, bo + 2, w);
	}
	static __device__ __forceinline__ int xblk(int, int)
	{
		return 0;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int, int,
						   Sub &o)
	{
#pragma unroll
		for (int w = 0; w < 8; w++)
			o.q[w] = r.qs[w];
		o.A0 = o.A1 = r.d;
		o.M0 = o.M1 = 0.0f;
	}
};

/* Q4_0, 18 B: f16 d; qs[16], element j the low nibble of byte j, element
 * j + 16 its high nibble; value (q - 8) d. */
template <> struct Fmt<MS_TYPE_Q4_0> {
	static constexpr int QK = 32, BS = 18, UPB = 1, NSUB = 1, ALIGN = 2;
	static constexpr bool A4 = false;
	static constexpr bool UQ = true;
	struct Raw {
		uint32_t qs[4];
		float d;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int)
	{
		r.d = f16_f32_hw(ldw<A4>(s, bo, 0) & 0xffffu);
#pragma unroll
		for (int w = 0; w < 4; w++)
			r.qs[w] = ldw<A4>(s, bo + 2, w);
	}
	static __device__ __forceinline__ int xblk(int, int)
	{
		return 0;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int, int,
						   Sub &o)
	{
#pragma unroll
		for (int w = 0; w < 4; w++) {
			o.q[w] = r.qs[w] & 0x0f0f0f0fu;
			o.q[w + 4] = (r.qs[w] >> 4) & 0x0f0f0f0fu;
		}
		o.A0 = o.A1 = r.d;
		o.M0 = o.M1 = 8.0f * r.d;
	}
};

/* MXFP4, 17 B: E8M0 e; qs[16] of E2M1 codes laid out as Q4_0's; value
 * kv[code] * 2^(e-128), kv the doubled E2M1 table (int8, -12..12). */
template <> struct Fmt<MS_TYPE_MXFP4> {
	static constexpr int QK = 32, BS = 17, UPB = 1, NSUB = 1, ALIGN = 1;
	static constexpr bool A4 = false;
	static constexpr bool UQ = false;
	struct Raw {
		uint32_t qs[4];
		float d;
	};
	static __device__ __forceinline__ void load(Raw &r, const uint32_t *s,
						    int bo, int)
	{
		r.d = e8m0_half_f32(ldw<A4>(s, bo, 0) & 0xffu);
#pragma unroll
		for (int w = 0; w < 4; w++)
			r.qs[w] = ldw<A4>(s, bo + 1, w);
	}
	static __device__ __forceinline__ int xblk(int, int)
	{
		return 0;
	}
	static __device__ __forceinline__ void sub(const Raw &r, int, int,
						   Sub &o)
	{
#pragma unroll
		for (int w = 0; w < 4; w++) {
			o.q[w] = lut16x4(r.qs[w] & 0x0f0f0f0fu, MSQ_E2M1_W0,
					 MSQ_E2M1_W1, MSQ_E2M1_W2, MSQ_E2M1_W3);
			o.q[w + 4] = lut16x4((r.qs[w] >> 4) & 0x0f0f0f0fu,
					     MSQ_E2M1_W0, MSQ_E2M1_W1,
					     MSQ_E2M1_W2, MSQ_E2M1_W3);
		}
		o.A0 = o.A1 = r.d;
		o.M0 = o.M1 = 0.0f;
	}
};

/* __dp4a with a's bytes unsigned (0..255) and b's signed: PTX has it,
 * CUDA's intrinsics do not. */
__device__ __forceinline__ int dp4a_us(uint32_t a, int b, int c)
{
#ifdef __CUDA_ARCH__
	int d;
	asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
	return d;
#else
	for (int i = 0; i < 4; i++)
		c += (int)((a >> (8 * i)) & 0xffu) * (int)(int8_t)(b >> (8 * i));
	return c;
#endif
}

/* c + q . x over four bytes, x signed, q unsigned (UQ) or signed */
template <bool UQ>
__device__ __forceinline__ int dp4(uint32_t q, int x, int c)
{
	return UQ ? dp4a_us(q, x, c) : __dp4a((int)q, x, c);
}

/* acc += sum over the 32 elements of (A q - M) * x, x = s * X: 8 NP
 * __dp4a, exact int32 sums; UQ: q's bytes are unsigned. */
template <int NP, bool UQ>
__device__ __forceinline__ void dot(const Sub &q, const XDig<NP> &x,
				    float &acc)
{
	int a[NP][2];
#pragma unroll
	for (int p = 0; p < NP; p++)
		a[p][0] = a[p][1] = 0;
#pragma unroll
	for (int w = 0; w < 4; w++)
#pragma unroll
		for (int p = 0; p < NP; p++) {
			a[p][0] = dp4<UQ>(q.q[w], x.p[p][w], a[p][0]);
			a[p][1] = dp4<UQ>(q.q[w + 4], x.p[p][w + 4],
					      a[p][1]);
		}
	float v0, v1;
	if (NP == 3) {
		/* |a|, |b| <= 16 * 255 * 128 < 2^19: b * 256 + a fits */
		v0 = fmaf((float)a[NP - 1][0], 65536.0f,
			  (float)(a[NP > 1][0] * 256 + a[0][0]));
		v1 = fmaf((float)a[NP - 1][1], 65536.0f,
			  (float)(a[NP > 1][1] * 256 + a[0][1]));
	} else {
		v0 = (float)a[0][0];
		v1 = (float)a[0][1];
	}
	acc = fmaf(q.A0 * x.s, v0, acc);
	acc = fmaf(-q.M0, x.s0, acc);
	acc = fmaf(q.A1 * x.s, v1, acc);
	acc = fmaf(-q.M1, x.s1, acc);
}

/* ---- the kernel -------------------------------------------------------- */

struct MvArgs {
	const uint8_t *wa[MSG_MV_MAX_EXPERTS];
	const uint8_t *wb[MSG_MV_MAX_EXPERTS];
	/* tab != NULL: expert e's matrices are tab[sel[e] * 3 + tab_j] (and
	 * + 1 for a pair's second), device memory; wa/wb unused */
	const uint8_t *const *tab;
	const int32_t *sel;
	int tab_j;
	const void *xq; /* XBlk<NP> */
	int64_t xq_stride;
	float *out;
	int64_t out_stride;
	float *part;   /* split-K partials [split][matrix][expert][B][row] */
	unsigned *cnt; /* split-K: ranges done, per [expert][tile]; zero */
	int S;         /* split-K ranges */
	void *oq;      /* the output prepared too (mv_store), or NULL */
	int64_t oq_stride; /* prepared blocks per expert */
	int64_t rs;    /* bytes per row */
	int n_rows;    /* output rows */
	int n_in;      /* elements per row */
	int B;         /* tokens, 1..BT */
	int ne;        /* experts in this launch */
	int tr_log2;   /* rows per tile: 1 << tr_log2 */
	int tiles;     /* tiles of rows: blockIdx.x = split * tiles + tile */
	int kspan;     /* blocks per split range */
	int kc;        /* blocks per chunk */
	int sw;        /* words per row slot (odd) */
	bool early;    /* msg_mv_call.early (with pdl) */
};

/* Word w of a slot whose row chunk is bytes [head, end) of the words from
 * g4, built byte by byte from those bytes only (the word's others may lie
 * outside the allocation); the rest are zero. */
__device__ __forceinline__ uint32_t mv_ragged_word(const uint8_t *g4, int w,
						   int head, int end)
{
	uint32_t v = 0;
	for (int k = 0; k < 4; k++) {
		const int p = 4 * w + k;
		if (p >= head && p < end)
			v |= (uint32_t)g4[p] << (8 * k);
	}
	return v;
}

/* Words [wf, wl) of a row's chunk whose first word is g4 into its slot,
 * by one warp, consecutive lanes on consecutive words, by 4-byte cp.async.
 * A row's chunk is only 300-2500 bytes, so what a row costs besides its
 * copies counts: a lane's copies go in groups of MV_CP_GROUP, each at a
 * fixed offset from one pointer (ptxas issues a group as one run of LDGSTS
 * with the offsets in the instructions, where a copy at a time cost a
 * dozen instructions and the peeled remainders of an unrolled loop some
 * seventy a row). */
__device__ __forceinline__ void mv_copy_words(const uint8_t *g4, uint32_t *slot,
					      int lane, int wf, int wl)
{
	const uint8_t *src = g4 + 4 * (wf + lane);
	uint32_t *d = slot + wf + lane;
#pragma unroll 1
	for (int rem = wl - wf - lane; rem > 0; rem -= 32 * MV_CP_GROUP,
		 src += 128 * MV_CP_GROUP, d += 32 * MV_CP_GROUP) {
#pragma unroll
		for (int q = 0; q < MV_CP_GROUP; q++)
			if (32 * q < rem)
				__pipeline_memcpy_async(d + 32 * q,
							src + 128 * q, 4);
	}
}

/* One row's chunk, len bytes from g, into its slot, for the formats whose
 * blocks or rows are not whole words (never A4), where rows do not all lie
 * alike in their words or this row may reach past the matrix: the slot
 * starts at the word holding g's first byte. The ragged first and last
 * word are copied whole as well where `whole` (the row lies inside the
 * matrix: their other bytes are the neighbouring blocks', which no unit
 * reads); else they go byte by byte, by one lane each, after the copies. */
__device__ __forceinline__ void mv_load_row(const uint8_t *g, int len,
					    uint32_t *slot, int lane,
					    bool whole)
{
	const int head = (int)((uintptr_t)g & 3);
	const uint8_t *g4 = g - head;
	const int end = head + len;
	/* the words copied whole: [wf, wl) */
	const int wf = whole ? 0 : head != 0;
	const int wl = whole ? (end + 3) >> 2 : end >> 2;
	mv_copy_words(g4, slot, lane, wf, wl);
	if (whole)
		return;
	if (lane == 0 && head)
		slot[0] = mv_ragged_word(g4, 0, head, end);
	if (lane == 31 && (end & 3) && wl >= wf)
		slot[wl] = mv_ragged_word(g4, wl, head, end);
}

/* Starts copying the chunk of blocks [b0, min(b0 + kc, kb1)) of the tile's
 * rows (both matrices for a pair) into dst, a warp per row: slot r (r < tr:
 * matrix A, else B) gets the 4-byte words that hold the row's chunk, from
 * the one holding its first byte. Rows past the end repeat the last row
 * (loaded, computed, never written). Where rows are whole words apart
 * (always for A4; for the others with an even number of 2-byte-aligned
 * blocks, as every model's here) every row's chunk lies alike in its
 * words, so what a row needs is worked out once for the tile, and a row is
 * its pointers and its copies. */
template <class F, int NM>
__device__ __forceinline__ void mv_load(const MvArgs &a, const uint8_t *wa,
					const uint8_t *wb, int row0, int tr,
					int b0, int kb1, uint32_t *dst)
{
	constexpr int NW = MV_THREADS / 32;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const int len = min(a.kc, kb1 - b0) * F::BS;
	const int64_t off = (int64_t)b0 * F::BS, step = NW * a.rs;
	/* the rows whose ragged words may lie past the matrix: the first
	 * row at its first chunk, the last row (and those repeating it) at
	 * its last */
	const int r_first = b0 == 0 ? 0 : -1;
	const int r_last = off + len == a.rs ? a.n_rows - 1 : INT_MAX;
	const bool alike = F::A4 || (a.rs & 3) == 0;
#pragma unroll
	for (int m = 0; m < NM; m++) {
		const uint8_t *base = (m ? wb : wa) + off;
		const uint8_t *last = base + (int64_t)(a.n_rows - 1) * a.rs;
		const uint8_t *g = base + (int64_t)(row0 + warp) * a.rs;
		uint32_t *slot = dst + (m * tr + warp) * a.sw;
		const int head = F::A4 ? 0 : (int)((uintptr_t)base & 3);
		const int nw = (head + len + 3) >> 2;
		for (int r = row0 + warp; r < row0 + tr;
		     r += NW, g += step, slot += NW * a.sw) {
			const bool whole = r != r_first && r < r_last;
			if (F::A4 || (alike && whole))
				mv_copy_words((r < a.n_rows ? g : last) - head,
					      slot, lane, 0, nw);
			else
				mv_load_row(r < a.n_rows ? g : last, len, slot,
					    lane, whole);
		}
	}
}

template <class F, int BT, bool PAIR, int NP>
__device__ __forceinline__ void
mv_compute(const MvArgs &a, const uint8_t *wa, const uint8_t *wb,
	   const XBlk<NP> *xq, int row0, int tr, int rl, int ks, int nks,
	   int b0, int kb1, const uint32_t *buf, float (&accA)[BT],
	   float (&accB)[BT])
{
	const int nxb = a.n_in / 32;
	const int nblk = min(a.kc, kb1 - b0);
	const int64_t rr = min(row0 + rl, a.n_rows - 1);
	const uint32_t *slA = buf + rl * a.sw;
	const uint32_t *slB = buf + (tr + rl) * a.sw;
	const int64_t off = rr * a.rs + (int64_t)b0 * F::BS;
	const int headA = (int)((uintptr_t)(wa + off) & 3);
	const int headB = PAIR ? (int)((uintptr_t)(wb + off) & 3) : 0;
	/* units ks, ks + nks, ...: all unit u of their blocks (what depends
	 * on u alone is worked out once, not per unit) */
	static_assert((MV_THREADS >> 5) % F::UPB == 0,
		      "the fewest k-slices (32-row tiles) must be a multiple "
		      "of the units per block");
	const int u = ks % F::UPB, bstep = nks / F::UPB;
	/* the block's byte offsets in the slots step with it */
	int boA = headA + ks / F::UPB * F::BS, boB = headB + ks / F::UPB * F::BS;
	/* and so does the block's prepared input: a pointer, not an index
	 * multiplied out per block */
	const XBlk<NP> *xk = xq + (b0 + ks / F::UPB) * (F::QK / 32);
	for (int blk = ks / F::UPB; blk < nblk; blk += bstep,
		 boA += bstep * F::BS, boB += bstep * F::BS,
		 xk += bstep * (F::QK / 32)) {
		typename F::Raw ra, rb;
		F::load(ra, slA, boA, u);
		if (PAIR)
			F::load(rb, slB, boB, u);
		/* unrolled at B = 1; at B = 8 the token loop is unrolled
		 * instead (the accumulators must stay in registers) and
		 * unrolling both spills: sub() takes a run-time s */
#pragma unroll(BT == 1 ? F::NSUB : 1)
		for (int s = 0; s < F::NSUB; s++) {
			Sub qa, qb;
			F::sub(ra, u, s, qa);
			if (PAIR)
				F::sub(rb, u, s, qb);
			const XBlk<NP> *xs = xk + F::xblk(u, s);
#pragma unroll
			for (int b = 0; b < BT; b++) {
				/* BT = 1 is B = 1: no test (a branch
				 * per sub-block would keep ptxas from
				 * moving the next one's loads up) */
				if (BT == 1 || b < a.B) {
					XDig<NP> xd;
					ld_x<NP>(xs + (int64_t)b * nxb, xd);
					dot<NP, F::UQ>(qa, xd, accA[b]);
					if (PAIR)
						dot<NP, F::UQ>(qb, xd, accB[b]);
				}
			}
		}
	}
}

/* A row's result, token b: the dot, or for a pair h = silu(g) * u in
 * double, as kernels/ffn.c computes it. With a.oq (a tile of 32 rows of a
 * multiple of 32: the caller, warp 0, holds one whole block of 32
 * outputs, every lane calling) the block is also written prepared there
 * for the next product (the down projection), as prep_kernel would. */
template <bool PAIR, int NP>
__device__ __forceinline__ void mv_store(const MvArgs &a, float *out, int e,
					 int b, int row, float g, float u)
{
	float v = g;
	if (PAIR) {
		const double gd = g;
		v = (float)(gd / (1.0 + exp(-gd)) * (double)u);
	}
	out[(int64_t)b * a.n_rows] = v;
	if (a.oq)
		prep_block<NP>(v, (XBlk<NP> *)a.oq + e * a.oq_stride +
					  ((int64_t)b * a.n_rows + row) / 32);
}

template <int T, int BT, bool PAIR, int NP>
__global__ void __launch_bounds__(MV_THREADS, 4)
mv_kernel(const __grid_constant__ MvArgs a)
{
	using F = Fmt<T>;
	constexpr int NM = PAIR ? 2 : 1;
	extern __shared__ __align__(16) uint32_t sm[];
	const int tid = threadIdx.x;
	const int tr = 1 << a.tr_log2, nks = MV_THREADS >> a.tr_log2;
	const int rl = tid & (tr - 1), ks = tid >> a.tr_log2;
	const int e = blockIdx.y;
	const int split = blockIdx.x / a.tiles;
	const int row0 = (blockIdx.x % a.tiles) * tr;
	/* PDL (gpu_internal.cuh): resident weights' first chunk is loaded
	 * before the wait for the kernel before (with a table, its experts
	 * found through sel, which is then complete: msg_mv_call.early);
	 * anything else after it */
	const bool early = a.early;
	if (!early)
		msg_grid_wait();
	const uint8_t *wa, *wb;
	if (a.tab) {
		/* sel from L2 (ld.global.cg): no line of it this SM's L1 may
		 * hold from an earlier layer's choice */
		const int64_t t = (int64_t)__ldcg(a.sel + e) * 3 + a.tab_j;
		wa = a.tab[t];
		wb = PAIR ? a.tab[t + 1] : wa;
	} else {
		wa = a.wa[e];
		wb = PAIR ? a.wb[e] : wa;
	}
	const XBlk<NP> *xq = (const XBlk<NP> *)a.xq + e * a.xq_stride;
	const int kb0 = split * a.kspan;
	const int kb1 = min(a.n_in / F::QK, kb0 + a.kspan);
	const int nch = (kb1 - kb0 + a.kc - 1) / a.kc;
	const int buf_words = NM * tr * a.sw;

	float accA[BT], accB[BT];
#pragma unroll
	for (int b = 0; b < BT; b++)
		accA[b] = accB[b] = 0.0f;

	mv_load<F, NM>(a, wa, wb, row0, tr, kb0, kb1, sm);
	__pipeline_commit();
	if (early)
		msg_grid_wait();
	for (int c = 0; c < nch; c++) {
		if (c + 1 < nch)
			mv_load<F, NM>(a, wa, wb, row0, tr, kb0 + (c + 1) * a.kc,
				       kb1, sm + ((c + 1) & 1) * buf_words);
		__pipeline_commit();   /* maybe empty: keeps the count */
		__pipeline_wait_prior(1); /* chunk c has landed */
		__syncthreads();
		mv_compute<F, BT, PAIR, NP>(a, wa, wb, xq, row0, tr, rl, ks,
					    nks, kb0 + c * a.kc, kb1,
					    sm + (c & 1) * buf_words, accA,
					    accB);
		__syncthreads(); /* before chunk c + 2 overwrites this buffer */
	}

	/* k-slices -> rows, in a fixed order */
	float *red = (float *)sm;
#pragma unroll
	for (int b = 0; b < BT; b++) {
		red[((ks * NM) * BT + b) * tr + rl] = accA[b];
		if (PAIR)
			red[((ks * NM + 1) * BT + b) * tr + rl] = accB[b];
	}
	__syncthreads();
	const int row = row0 + rl;
	const bool mine = ks == 0 && row < a.n_rows;
	float *out = a.out + e * a.out_stride + row;
	/* split-K: this range's sums */
	const int64_t pstride = (int64_t)a.ne * a.B * a.n_rows;
	float *part = a.part ? a.part + (int64_t)e * a.B * a.n_rows + row
			     : nullptr;
	for (int b = 0; mine && b < a.B; b++) {
		float g = 0.0f, u = 0.0f;
		for (int k = 0; k < nks; k++) {
			g += red[((k * NM) * BT + b) * tr + rl];
			if (PAIR)
				u += red[((k * NM + 1) * BT + b) * tr + rl];
		}
		if (part) {
			float *pz = part + (int64_t)split * NM * pstride;
			pz[(int64_t)b * a.n_rows] = g;
			if (PAIR)
				pz[pstride + (int64_t)b * a.n_rows] = u;
		} else {
			mv_store<PAIR, NP>(a, out, e, b, row, g, u);
		}
	}
	if (!part)
		return;
	/* the tile's last range to finish adds them up: every CTA's
	 * partials are visible device-wide before it counts itself
	 * (__threadfence), and the last one fences again before reading
	 * them from L2 */
	__threadfence();
	__syncthreads(); /* also: red's readers are done with sm[0] */
	unsigned *cnt = a.cnt + e * a.tiles + blockIdx.x % a.tiles;
	if (tid == 0)
		sm[0] = atomicAdd(cnt, 1u) == (unsigned)a.S - 1;
	__syncthreads();
	if (!sm[0])
		return;
	__threadfence();
	for (int b = 0; mine && b < a.B; b++) {
		float g = 0.0f, u = 0.0f;
		for (int z = 0; z < a.S; z++) {
			const float *pz = part + (int64_t)z * NM * pstride +
					  (int64_t)b * a.n_rows;
			g += __ldcg(pz);
			if (PAIR)
				u += __ldcg(pz + pstride);
		}
		mv_store<PAIR, NP>(a, out, e, b, row, g, u);
	}
	if (tid == 0)
		*cnt = 0; /* the next launch's (kernels on a stream are ordered) */
}

/* ---- host side -------------------------------------------------------- */

typedef void (*mv_kernel_t)(const MvArgs);

struct MvInfo {
	int qk, bs, upb, align;
	mv_kernel_t k[2][2][2]; /* [q8][BT == 8][pair] */
};

template <int T> MvInfo mv_info()
{
	using F = Fmt<T>;
	return { F::QK,
		 F::BS,
		 F::UPB,
		 F::ALIGN,
		 { { { mv_kernel<T, 1, false, 3>, mv_kernel<T, 1, true, 3> },
		     { mv_kernel<T, 8, false, 3>, mv_kernel<T, 8, true, 3> } },
		   { { mv_kernel<T, 1, false, 1>, mv_kernel<T, 1, true, 1> },
		     { mv_kernel<T, 8, false, 1>,
		       mv_kernel<T, 8, true, 1> } } } };
}

bool mv_lookup(uint32_t type, MvInfo *m)
{
	switch (type) {
	case MS_TYPE_Q2_K: *m = mv_info<MS_TYPE_Q2_K>(); return true;
	case MS_TYPE_Q3_K: *m = mv_info<MS_TYPE_Q3_K>(); return true;
	case MS_TYPE_Q4_K: *m = mv_info<MS_TYPE_Q4_K>(); return true;
	case MS_TYPE_Q5_K: *m = mv_info<MS_TYPE_Q5_K>(); return true;
	case MS_TYPE_Q6_K: *m = mv_info<MS_TYPE_Q6_K>(); return true;
	case MS_TYPE_Q8_0: *m = mv_info<MS_TYPE_Q8_0>(); return true;
	case MS_TYPE_Q4_0: *m = mv_info<MS_TYPE_Q4_0>(); return true;
	case MS_TYPE_MXFP4: *m = mv_info<MS_TYPE_MXFP4>(); return true;
	default: return false;
	}
}

/* How a call is cut: tiles, chunks, split-K ranges. */
struct MvPlan {
	int tr_log2, tiles, kc, sw, S, kspan, ne;
	size_t smem;
};

/*
 * Tiles: 32 rows unless that gives fewer than two CTAs per multiprocessor
 * (a single expert's 1536 gate rows), then 16 or 8.
 * Split-K: if the launch (the first MSG_MV_MAX_EXPERTS experts) still has
 * fewer CTAs than a wave of 4 per multiprocessor, S = the CTAs short of a
 * wave, rounded up, but no more than keeps at least one unit per k-slice
 * in each range (and at most MSG_MV_MAX_SPLIT). c->split: 0 this rule, 1
 * never, N >= 2 N ranges (at most one per block) whatever the rule says.
 * Chunks: about c->chunk bytes per buffer (MS_GPU_CHUNK_DEFAULT, 20 KB:
 * 10 KB of each matrix for a pair; two buffers: ~40 KB of shared memory,
 * under the 48 KB every target gives without opting in), rounded to whole
 * units per k-slice (kmul blocks: at most 16 of 34 bytes, or 8 of 110,
 * in 8-row tiles, so always well under the limit), at most a range. The
 * longer a row's chunk, the less of the loader's work is per row (a
 * single matrix's rows take twice a pair's). A thread takes the same
 * units of the range whatever the chunk's length, so the result does not
 * depend on it (t_gpu_kernels checks sizes from the least to the most).
 */
bool mv_plan(const struct msg_mv_call *c, const MvInfo &m, MvPlan *p)
{
	if (c->B < 1 || c->B > MSG_MV_MAX_TOKENS || c->n_e < 1 ||
	    c->n_in % m.qk || c->n_in % 32 || c->n_rows < 1 || c->split < 0)
		return false;
	const int NM = c->pair ? 2 : 1;
	const int BT = c->B == 1 ? 1 : 8;
	const int nb = c->n_in / m.qk;
	p->ne = c->n_e < MSG_MV_MAX_EXPERTS ? c->n_e : MSG_MV_MAX_EXPERTS;

	int tr_log2 = 5;
	while (tr_log2 > 3 &&
	       (int64_t)((c->n_rows + (1 << tr_log2) - 1) >> tr_log2) * p->ne <
		       2 * (int64_t)c->sms)
		tr_log2--;
	const int tr = 1 << tr_log2, nks = MV_THREADS / tr;
	p->tr_log2 = tr_log2;
	p->tiles = (c->n_rows + tr - 1) / tr;

	int S = 1;
	const int64_t ctas = (int64_t)p->tiles * p->ne;
	if (c->split >= 2) {
		S = c->split;
	} else if (c->split == 0 && ctas < 4 * (int64_t)c->sms) {
		const int64_t want = (4 * (int64_t)c->sms + ctas - 1) / ctas;
		const int most = nb * m.upb / nks;
		S = (int)(want < most ? want : most);
	}
	S = S > MSG_MV_MAX_SPLIT ? MSG_MV_MAX_SPLIT : S > nb ? nb : S;
	S = S < 1 ? 1 : S;
	p->kspan = (nb + S - 1) / S;
	p->S = (nb + p->kspan - 1) / p->kspan; /* no empty range */

	/* blocks a k-slice's units span: nks is a multiple of the units per
	 * block (mv_compute's static_assert) */
	const int kmul = nks / m.upb;
	const int budget = c->chunk > 0 ? c->chunk : MS_GPU_CHUNK_DEFAULT;
	int kc = (int)(budget / (NM * tr * m.bs));
	kc = kc < kmul ? kmul : (kc + kmul / 2) / kmul * kmul;
	if (kc > p->kspan)
		kc = p->kspan;
	for (;;) {
		p->sw = (((3 + kc * m.bs + 3) >> 2) + 2) | 1;
		const size_t bufs = (size_t)2 * NM * tr * p->sw * 4;
		const size_t red = (size_t)MV_THREADS * NM * BT * 4;
		p->smem = bufs > red ? bufs : red;
		if (p->smem <= 46 * 1024 || kc == 1)
			break;
		kc = kc > kmul ? kc - kmul : kc - 1;
	}
	p->kc = kc;
	return true;
}

} /* namespace */

bool msg_matvec_type(uint32_t type)
{
	MvInfo m;
	return mv_lookup(type, &m);
}

int msg_matvec_align(uint32_t type)
{
	MvInfo m;
	return mv_lookup(type, &m) ? m.align : 1;
}

size_t msg_xblk_bytes(bool q8)
{
	return q8 ? MSG_XBLK8_BYTES : MSG_XBLK_BYTES;
}

cudaError_t msg_prep_launch(const float *in, const float *in2,
			    int64_t in_stride, void *xq, int n, int B,
			    int n_sets, bool q8, cudaStream_t stream, bool pdl)
{
	const int64_t warps = (int64_t)n_sets * B * (n / 32);
	const int64_t blocks = (warps + 7) / 8;
	if (blocks > 0x7fffffff)
		return cudaErrorInvalidValue;
	if (q8)
		return msg_launch(prep_kernel<1>, dim3((unsigned)blocks), dim3(256),
				  0, stream, pdl, in, in2, in_stride,
				  (XBlk<1> *)xq, n, B, warps);
	return msg_launch(prep_kernel<3>, dim3((unsigned)blocks), dim3(256), 0,
			  stream, pdl, in, in2, in_stride, (XBlk<3> *)xq, n, B,
			  warps);
}

bool msg_matvec_out_prep(const struct msg_mv_call *c)
{
	MvInfo m;
	MvPlan p;
	return mv_lookup(c->type, &m) && mv_plan(c, m, &p) && p.tr_log2 == 5 &&
	       c->n_rows % 32 == 0;
}

size_t msg_matvec_part_bytes(const struct msg_mv_call *c)
{
	MvInfo m;
	MvPlan p;
	if (!mv_lookup(c->type, &m) || !mv_plan(c, m, &p) || p.S < 2)
		return 0;
	return (size_t)p.S * (c->pair ? 2 : 1) * p.ne * c->B * c->n_rows *
	       sizeof(float);
}

cudaError_t msg_matvec_launch(const struct msg_mv_call *c, cudaStream_t stream)
{
	MvInfo m;
	MvPlan p;
	if (!mv_lookup(c->type, &m) || !mv_plan(c, m, &p))
		return cudaErrorInvalidValue;
	const size_t part_bytes = msg_matvec_part_bytes(c);
	if (part_bytes && (!c->part || c->part_bytes < part_bytes || !c->cnt ||
			   (int64_t)p.tiles * p.ne > MSG_MV_CNT_MAX))
		return cudaErrorInvalidValue;
	if (c->out_q && (p.tr_log2 != 5 || c->n_rows % 32))
		return cudaErrorInvalidValue;
	const int BT = c->B == 1 ? 1 : 8;
	const size_t xb = msg_xblk_bytes(c->q8);

	MvArgs a;
	memset(&a, 0, sizeof(a));
	a.xq_stride = c->xq_stride;
	a.out_stride = c->out_stride;
	a.part = p.S > 1 ? (float *)c->part : nullptr;
	a.cnt = c->cnt;
	a.S = p.S;
	a.rs = c->rs;
	a.n_rows = c->n_rows;
	a.n_in = c->n_in;
	a.B = c->B;
	a.tr_log2 = p.tr_log2;
	a.tiles = p.tiles;
	a.kspan = p.kspan;
	a.kc = p.kc;
	a.sw = p.sw;
	a.early = c->pdl && c->early;
	const mv_kernel_t k = m.k[c->q8][BT == 8][c->pair];
	for (int e0 = 0; e0 < c->n_e; e0 += MSG_MV_MAX_EXPERTS) {
		const int ne = c->n_e - e0 < MSG_MV_MAX_EXPERTS
				       ? c->n_e - e0
				       : MSG_MV_MAX_EXPERTS;
		if (c->tab) {
			a.tab = (const uint8_t *const *)c->tab;
			a.sel = c->sel + e0;
			a.tab_j = c->tab_j;
		} else {
			for (int i = 0; i < ne; i++) {
				a.wa[i] = (const uint8_t *)c->wa[e0 + i];
				a.wb[i] = c->pair ? (const uint8_t *)c->wb[e0 + i]
						  : nullptr;
			}
		}
		a.ne = ne;
		a.xq = (const uint8_t *)c->xq + (size_t)(e0 * c->xq_stride) * xb;
		a.oq = c->out_q ? (uint8_t *)c->out_q +
					  (size_t)(e0 * c->out_q_stride) * xb
				: nullptr;
		a.oq_stride = c->out_q_stride;
		a.out = c->out + e0 * c->out_stride;
		const dim3 grid((unsigned)(p.tiles * p.S), (unsigned)ne);
		cudaError_t ce = msg_launch(k, grid, dim3(MV_THREADS), p.smem,
					    stream, c->pdl, a);
		if (ce != cudaSuccess)
			return ce;
	}
	return cudaSuccess;
}
