/*
 * engine/unicode.c - code point classes, UTF-8 and GPT-2's byte map for the
 * tokenizer.
 *
 * The classes come from engine/unicode_ranges.h, generated from Debian's
 * UnicodeData.txt (tools/gen-unicode.sh). At first use they are expanded to
 * one uint16 per code point (2.2 MB), so that a lookup in the tokenizer's
 * inner loop is one load, as llama.cpp does with its own tables.
 *
 * White space is not a general category. The set below is the one llama.cpp's
 * tables hold (Unicode's White_Space property: TAB..CR, space, NEL, NBSP,
 * OGHAM SPACE MARK, EN QUAD..HAIR SPACE, LINE and PARAGRAPH SEPARATOR, NARROW
 * NBSP, MEDIUM MATHEMATICAL SPACE, IDEOGRAPHIC SPACE).
 */
#include <pthread.h>
#include <stdlib.h>

#include "unicode.h"

#include "unicode_ranges.h"

static uint16_t *cls_table;
static pthread_once_t cls_once = PTHREAD_ONCE_INIT;

static const uint32_t space_cps[] = {
	0x0009, 0x000A, 0x000B, 0x000C, 0x000D, 0x0020, 0x0085, 0x00A0,
	0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
	0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F,
	0x3000,
};

static void cls_build(void)
{
	uint16_t *t = malloc(MS_UCD_MAX_CP * sizeof(*t));
	if (!t)
		abort(); /* 2.2 MB at start-up; nothing sensible to do without */
	size_t nr = sizeof(ms_ucd_ranges) / sizeof(ms_ucd_ranges[0]);
	for (size_t i = 0; i < nr; i++) {
		uint32_t end = i + 1 < nr ? ms_ucd_ranges[i + 1].start
					  : MS_UCD_MAX_CP;
		for (uint32_t c = ms_ucd_ranges[i].start; c < end; c++)
			t[c] = ms_ucd_ranges[i].cls;
	}
	for (size_t i = 0; i < sizeof(space_cps) / sizeof(space_cps[0]); i++)
		t[space_cps[i]] |= MS_UCD_SPACE;
	cls_table = t;
}

const uint16_t *ms_ucd_table(void)
{
	pthread_once(&cls_once, cls_build);
	return cls_table;
}

uint16_t ms_ucd_class(uint32_t cp)
{
	return cp < MS_UCD_MAX_CP ? ms_ucd_table()[cp] : 0;
}

size_t ms_utf8_decode(const char *text, size_t len, uint32_t *cps,
		      uint32_t *byte_off)
{
	const uint8_t *s = (const uint8_t *)text;
	size_t i = 0, n = 0;
	while (i < len) {
		uint8_t b = s[i];
		uint32_t cp = 0xFFFD;
		size_t k = 1;
		if (b < 0x80) {
			cp = b;
		} else if (!(b & 0x40)) {
			/* a stray continuation byte */
		} else {
			size_t need = !(b & 0x20) ? 2 : !(b & 0x10) ? 3
					: !(b & 0x08) ? 4 : 0;
			bool ok = need && i + need <= len;
			for (size_t j = 1; ok && j < need; j++)
				ok = (s[i + j] & 0xC0) == 0x80;
			if (ok) {
				cp = need == 2 ? b & 0x1Fu : need == 3 ? b & 0x0Fu
								   : b & 0x07u;
				for (size_t j = 1; j < need; j++)
					cp = cp << 6 | (s[i + j] & 0x3Fu);
				k = need;
			}
		}
		if (byte_off)
			byte_off[n] = (uint32_t)i;
		cps[n++] = cp;
		i += k;
	}
	if (byte_off)
		byte_off[n] = (uint32_t)len;
	return n;
}

size_t ms_utf8_encode(uint32_t cp, char *out)
{
	uint8_t *o = (uint8_t *)out;
	if (cp < 0x80) {
		o[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (uint8_t)(0xC0 | cp >> 6);
		o[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (uint8_t)(0xE0 | cp >> 12);
		o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	if (cp < 0x110000) {
		o[0] = (uint8_t)(0xF0 | cp >> 18);
		o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
		o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
		o[3] = (uint8_t)(0x80 | (cp & 0x3F));
		return 4;
	}
	return 0;
}

/* GPT-2's map: the printable bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF stand
 * for themselves; the other 68, in increasing order, for U+0100, U+0101, ...
 * (so space is U+0120 'Ġ' and '\n' U+010A 'Ċ'). */
static bool byte_is_self(unsigned b)
{
	return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) ||
	       (b >= 0xAE && b <= 0xFF);
}

static struct {
	char utf8[256][2];
	uint8_t len[256];
	int16_t back[0x200]; /* code point -> byte, for cp < 0x200 */
} bl;
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_build(void)
{
	unsigned next = 0x100;
	for (unsigned i = 0; i < 0x200; i++)
		bl.back[i] = -1;
	for (unsigned b = 0; b < 256; b++) {
		unsigned cp = byte_is_self(b) ? b : next++;
		char tmp[4];
		size_t l = ms_utf8_encode(cp, tmp);
		bl.utf8[b][0] = tmp[0];
		bl.utf8[b][1] = l > 1 ? tmp[1] : 0;
		bl.len[b] = (uint8_t)l;
		bl.back[cp] = (int16_t)b;
	}
}

int ms_bytelevel_decode(uint32_t cp)
{
	pthread_once(&bl_once, bl_build);
	return cp < 0x200 ? bl.back[cp] : -1;
}

const char *ms_bytelevel_encode(uint8_t b, size_t *len)
{
	pthread_once(&bl_once, bl_build);
	*len = bl.len[b];
	return bl.utf8[b];
}
