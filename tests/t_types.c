/*
 * t_types.c - moestream's quant type table against ggml's own.
 *
 * For every id 0..45: the ids moestream knows (0..39 less the retired 4, 5,
 * 31-33, 36-38) have ggml's name, block size, bytes per block, "quantized"
 * flag and row size; retired ids and ids >= 40 (ggml's nvfp4, q1_0, q2_0 and
 * beyond) are rejected by every entry point; names round-trip.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

static bool retired(uint32_t id)
{
	return id == 4 || id == 5 || (id >= 31 && id <= 33) ||
	       (id >= 36 && id <= 38);
}

/* Row sizes where ggml and moestream must agree exactly. */
static void check_row_sizes(const struct ggml_ref *r, uint32_t id,
			    const struct ms_type_info *ti)
{
	int64_t blck = r->ggml_blck_size((int)id);
	static const int64_t mult[] = { 1, 2, 3, 7, 8, 10, 20, 160, 4096,
					1 << 20, 1ll << 32 };
	for (size_t k = 0; k < sizeof(mult) / sizeof(mult[0]); k++) {
		int64_t ne0 = blck * mult[k];
		uint64_t got = 0;
		struct ms_err err = { 0 };
		int rc = ms_type_row_size(id, ne0, &got, &err);
		size_t want = r->ggml_row_size((int)id, ne0);
		T_CHECK(rc == 0 && got == want,
			"ms_type_row_size(%s, %lld) = %d, %llu; ggml_row_size "
			"= %zu (%s)", ti->name, (long long)ne0, rc,
			(unsigned long long)got, want, err.msg);
	}
	/* Products that ggml would compute in size_t and we must refuse. */
	int64_t big = INT64_MAX / blck * blck;
	unsigned __int128 exact =
		(unsigned __int128)r->ggml_type_size((int)id) *
		(unsigned __int128)(big / blck);
	if (exact > UINT64_MAX) {
		uint64_t got = 0;
		int rc = ms_type_row_size(id, big, &got, NULL);
		T_CHECK(rc == -EOVERFLOW,
			"ms_type_row_size(%s, %lld) = %d (%llu), expected "
			"-EOVERFLOW", ti->name, (long long)big, rc,
			(unsigned long long)got);
	}
	/* ne0 below 1 and, for block types, not a multiple of the block. */
	static const int64_t bad[] = { 0, -1, INT64_MIN };
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		uint64_t got = 0;
		int rc = ms_type_row_size(id, bad[k], &got, NULL);
		T_CHECK(rc == -EINVAL, "ms_type_row_size(%s, %lld) = %d, "
			"expected -EINVAL", ti->name, (long long)bad[k], rc);
	}
	if (blck > 1) {
		int64_t odd[] = { 1, blck - 1, blck + 1, 3 * blck + blck / 2 };
		for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++) {
			uint64_t got = 0;
			int rc = ms_type_row_size(id, odd[k], &got, NULL);
			T_CHECK(rc == -EINVAL, "ms_type_row_size(%s, %lld) = "
				"%d, expected -EINVAL (block %lld)", ti->name,
				(long long)odd[k], rc, (long long)blck);
		}
	}
}

static void check_known(const struct ggml_ref *r, uint32_t id)
{
	const struct ms_type_info *ti = ms_type_get(id);
	if (!ti) {
		T_CHECK(0, "ms_type_get(%u) = NULL; ggml knows it as %s", id,
			r->ggml_type_name((int)id));
		return;
	}
	const char *gname = r->ggml_type_name((int)id);
	T_CHECK(ti->name && !strcmp(ti->name, gname),
		"type %u: name '%s', ggml '%s'", id, ti->name ? ti->name : "",
		gname);
	T_EQ_U64(ti->blck, r->ggml_blck_size((int)id));
	T_EQ_U64(ti->type_size, r->ggml_type_size((int)id));
	T_CHECK(ti->quantized == r->ggml_is_quantized((int)id),
		"type %u (%s): quantized %d, ggml %d", id, gname,
		ti->quantized, r->ggml_is_quantized((int)id));
	T_CHECK(!strcmp(ms_type_name(id), gname),
		"ms_type_name(%u) = '%s', ggml '%s'", id, ms_type_name(id),
		gname);

	/* Names round-trip, as ggml prints them and in upper case. */
	int back = ms_type_from_name(gname);
	T_CHECK(back == (int)id, "ms_type_from_name(\"%s\") = %d, want %u",
		gname, back, id);
	char up[64];
	size_t i;
	for (i = 0; gname[i] && i < sizeof(up) - 1; i++)
		up[i] = (char)toupper((unsigned char)gname[i]);
	up[i] = '\0';
	back = ms_type_from_name(up);
	T_CHECK(back == (int)id, "ms_type_from_name(\"%s\") = %d, want %u",
		up, back, id);

	check_row_sizes(r, id, ti);
}

static void check_rejected(const struct ggml_ref *r, uint32_t id)
{
	const struct ms_type_info *ti = ms_type_get(id);
	T_CHECK(ti == NULL, "ms_type_get(%u) = '%s', expected NULL (%s)", id,
		ti && ti->name ? ti->name : "?",
		retired(id) ? "retired" : "unknown to moestream");

	char want[32];
	snprintf(want, sizeof(want), "%s(%u)",
		 retired(id) ? "retired" : "unknown", id);
	const char *nm = ms_type_name(id);
	T_CHECK(nm && !strcmp(nm, want), "ms_type_name(%u) = '%s', want '%s'",
		id, nm ? nm : "(null)", want);

	uint64_t got = 12345;
	int rc = ms_type_row_size(id, 256, &got, NULL);
	T_CHECK(rc == -EINVAL, "ms_type_row_size(%u, 256) = %d (%llu), "
		"expected -EINVAL", id, rc, (unsigned long long)got);

	/* ggml's name for an id it knows but we do not must not map back. */
	if (id < GGML_REF_TYPE_COUNT && ggml_ref_type_ok(r, (int)id)) {
		const char *gname = r->ggml_type_name((int)id);
		rc = ms_type_from_name(gname);
		T_CHECK(rc == -EINVAL, "ms_type_from_name(\"%s\") = %d, "
			"expected -EINVAL (id %u is not moestream's)", gname,
			rc, id);
	}
}

int main(void)
{
	struct ggml_ref r;
	ggml_ref_load_or_fail(&r);

	int known = 0;
	for (uint32_t id = 0; id <= 45; id++) {
		if (id < MS_TYPE_COUNT && !retired(id)) {
			if (!ggml_ref_type_ok(&r, (int)id)) {
				T_CHECK(0, "ggml does not know type %u", id);
				continue;
			}
			check_known(&r, id);
			known++;
		} else {
			check_rejected(&r, id);
		}
	}
	T_CHECK(known == 32, "%d known types, expected 32", known);
	T_CHECK(MS_TYPE_COUNT == 40, "MS_TYPE_COUNT = %d", MS_TYPE_COUNT);

	/* Ids far out, as a hostile file would give them. */
	static const uint32_t far[] = { 64, 255, 1000, 0x7fffffffu,
					0x80000000u, 0xffffffffu };
	for (size_t i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
		T_CHECK(ms_type_get(far[i]) == NULL, "ms_type_get(%u) != NULL",
			far[i]);
		uint64_t got;
		T_CHECK(ms_type_row_size(far[i], 32, &got, NULL) == -EINVAL,
			"ms_type_row_size(%u) accepted", far[i]);
		T_CHECK(ms_type_name(far[i]) != NULL, "ms_type_name(%u) NULL",
			far[i]);
	}

	static const char *const bad_names[] = {
		"", "q2", "q2_K ", " q2_K", "q4_0_4_4", "DEPRECATED", "nvfp4",
		"q1_0", "q2_0", "f33", "none",
	};
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		int rc = ms_type_from_name(bad_names[i]);
		T_CHECK(rc == -EINVAL, "ms_type_from_name(\"%s\") = %d, "
			"expected -EINVAL", bad_names[i], rc);
	}

	printf("%d types checked against ggml, ids 0..45\n", known);
	return t_done();
}
