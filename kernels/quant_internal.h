/*
 * quant_internal.h - small facts of the GGUF block formats that several
 * kernel files read (the dequantisers, the AVX2 path, the 8-bit-activation
 * kernels): little-endian halves, IEEE half to float, the packed 6-bit
 * scales of Q4_K and Q5_K. Not a contract between rooms: kernels.h is.
 */
#ifndef MS_KERNELS_QUANT_INTERNAL_H
#define MS_KERNELS_QUANT_INTERNAL_H

#include <stdint.h>
#include <string.h>

static inline uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static inline float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* IEEE half -> float. Exact for every finite value and for infinities; a NaN
 * keeps sign and payload and gets the quiet bit, as ggml's does. */
static inline float f16_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;

	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000u | man << 13 |
				(man ? 0x00400000u : 0));
	if (exp)
		return bits_f32(sign | (exp + 112) << 23 | man << 13);
	if (!man)
		return bits_f32(sign);
	/* Subnormal: man x 2^-24. Shift the leading 1 up to bit 10 and lower
	 * the exponent by as much. */
	int shift = __builtin_clz(man) - 21; /* 1..10 */
	man = (man << shift) & 0x3ffu;
	return bits_f32(sign | (uint32_t)(113 - shift) << 23 | man << 13);
}

/* Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins packed in 12 bytes.
 * For g < 4: scale = b[g] & 63, min = b[g+4] & 63. For g >= 4 the low 4
 * bits come from b[g+4] (scale: low nibble, min: high nibble) and the top 2
 * from the spare top bits of b[g-4] (scale) and b[g] (min). */
static inline void k4_scale_min(const uint8_t *b, int g, int *sc, int *mn)
{
	if (g < 4) {
		*sc = b[g] & 63;
		*mn = b[g + 4] & 63;
	} else {
		*sc = (b[g + 4] & 0xf) | (b[g - 4] >> 6) << 4;
		*mn = (b[g + 4] >> 4) | (b[g] >> 6) << 4;
	}
}

/* Q3_K's 6-bit scale of group g (0..15), stored + 32, from scales[12]: the
 * low 4 bits are the low nibble of scales[g] for g < 8, the high nibble of
 * scales[g-8] for g >= 8; the top 2 bits are bits 2(g/4) of
 * scales[8 + g%4]. Returned without the 32 taken off. */
static inline int k3_scale(const uint8_t *ss, int g)
{
	const int lo = g < 8 ? ss[g] & 0xf : ss[g - 8] >> 4;
	const int hi = (ss[8 + g % 4] >> (2 * (g / 4))) & 3;
	return lo | hi << 4;
}

#endif
