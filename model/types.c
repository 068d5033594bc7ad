/*
 * types.c - the quant type table: ggml type id -> name, block size, bytes per
 * block.
 *
 * One table, indexed by the id a file hands us. The ids are ggml's: they are
 * the on-disk format, so they never change meaning; retired ids (Q4_2, Q4_3,
 * the runtime-repacked Q4_0_x_y and IQ4_NL_x_y) keep their hole and are
 * rejected, as is every id past the last type we know (MXFP4). A name of NULL
 * marks a hole. Every id that comes from a file goes through ms_type_get()
 * before it is used for anything.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "moestream/model.h"

#define T(id, nm, b, sz, q)                                                    \
	[id] = { .name = nm, .blck = b, .type_size = sz, .quantized = q }

static const struct ms_type_info type_table[MS_TYPE_COUNT] = {
	T(MS_TYPE_F32, "f32", 1, 4, false),
	T(MS_TYPE_F16, "f16", 1, 2, false),
	T(MS_TYPE_Q4_0, "q4_0", 32, 18, true),   /* f16 d + 16 B nibbles */
	T(MS_TYPE_Q4_1, "q4_1", 32, 20, true),   /* f16 d, m + 16 B */
	T(MS_TYPE_Q5_0, "q5_0", 32, 22, true),   /* f16 d + 4 B qh + 16 B */
	T(MS_TYPE_Q5_1, "q5_1", 32, 24, true),   /* f16 d, m + 4 + 16 */
	T(MS_TYPE_Q8_0, "q8_0", 32, 34, true),   /* f16 d + 32 B */
	T(MS_TYPE_Q8_1, "q8_1", 32, 36, true),   /* f16 d, s + 32 B */
	T(MS_TYPE_Q2_K, "q2_K", 256, 84, true),  /* 16 scales, 64 qs, d, dmin */
	T(MS_TYPE_Q3_K, "q3_K", 256, 110, true), /* 32 hmask, 64 qs, 12 sc, d */
	T(MS_TYPE_Q4_K, "q4_K", 256, 144, true), /* d, dmin, 12 sc, 128 qs */
	T(MS_TYPE_Q5_K, "q5_K", 256, 176, true), /* + 32 qh */
	T(MS_TYPE_Q6_K, "q6_K", 256, 210, true), /* 128 ql, 64 qh, 16 sc, d */
	T(MS_TYPE_Q8_K, "q8_K", 256, 292, true), /* f32 d, 256 qs, 16 i16 sums */
	T(MS_TYPE_IQ2_XXS, "iq2_xxs", 256, 66, true),
	T(MS_TYPE_IQ2_XS, "iq2_xs", 256, 74, true),
	T(MS_TYPE_IQ3_XXS, "iq3_xxs", 256, 98, true),
	T(MS_TYPE_IQ1_S, "iq1_s", 256, 50, true),
	T(MS_TYPE_IQ4_NL, "iq4_nl", 32, 18, true),
	T(MS_TYPE_IQ3_S, "iq3_s", 256, 110, true),
	T(MS_TYPE_IQ2_S, "iq2_s", 256, 82, true),
	T(MS_TYPE_IQ4_XS, "iq4_xs", 256, 136, true),
	T(MS_TYPE_I8, "i8", 1, 1, false),
	T(MS_TYPE_I16, "i16", 1, 2, false),
	T(MS_TYPE_I32, "i32", 1, 4, false),
	T(MS_TYPE_I64, "i64", 1, 8, false),
	T(MS_TYPE_F64, "f64", 1, 8, false),
	T(MS_TYPE_IQ1_M, "iq1_m", 256, 56, true),
	T(MS_TYPE_BF16, "bf16", 1, 2, false),
	T(MS_TYPE_TQ1_0, "tq1_0", 256, 54, true),
	T(MS_TYPE_TQ2_0, "tq2_0", 256, 66, true),
	T(MS_TYPE_MXFP4, "mxfp4", 32, 17, true), /* e8m0 scale + 16 B */
};

/* Retired ids have names in messages, so a user learns why a file from an
 * old converter is refused. */
static bool type_is_retired(uint32_t t)
{
	return t == 4 || t == 5 || (t >= 31 && t <= 33) || (t >= 36 && t <= 38);
}

const struct ms_type_info *ms_type_get(uint32_t type)
{
	if (type >= MS_TYPE_COUNT || !type_table[type].name)
		return NULL;
	return &type_table[type];
}

const char *ms_type_name(uint32_t type)
{
	static __thread char buf[32];
	const struct ms_type_info *ti = ms_type_get(type);
	if (ti)
		return ti->name;
	snprintf(buf, sizeof(buf), "%s(%u)",
		 type_is_retired(type) ? "retired" : "unknown", type);
	return buf;
}

int ms_type_from_name(const char *name)
{
	if (!name)
		return -EINVAL;
	for (uint32_t t = 0; t < MS_TYPE_COUNT; t++)
		if (type_table[t].name && !strcasecmp(type_table[t].name, name))
			return (int)t;
	return -EINVAL;
}

int ms_type_row_size(uint32_t type, int64_t ne0, uint64_t *out,
		     struct ms_err *err)
{
	const struct ms_type_info *ti = ms_type_get(type);
	uint64_t r;

	if (!ti)
		return ms_err_set(err, -EINVAL, "type %s is not supported",
				  ms_type_name(type));
	if (ne0 < 1)
		return ms_err_set(err, -EINVAL, "row of %lld elements",
				  (long long)ne0);
	if ((uint64_t)ne0 % ti->blck)
		return ms_err_set(err, -EINVAL,
				  "row of %lld elements is not a multiple of "
				  "%s's block of %u",
				  (long long)ne0, ti->name, ti->blck);
	if (ms_mul_overflow_u64((uint64_t)ne0 / ti->blck, ti->type_size, &r))
		return ms_err_set(err, -EOVERFLOW,
				  "row of %lld %s elements overflows",
				  (long long)ne0, ti->name);
	*out = r;
	return 0;
}
