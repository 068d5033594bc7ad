/*
 * engine/unicode.h - what the tokenizer needs of Unicode: the class of a
 * code point (from Debian's UnicodeData.txt, see tools/gen-unicode.sh), the
 * white-space set, UTF-8 decoding with llama.cpp's rules, and GPT-2's
 * byte <-> character map. Private to engine/.
 */
#ifndef MS_ENGINE_UNICODE_H
#define MS_ENGINE_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Class bits: one of the first eight, plus MS_UCD_SPACE for white space. */
enum {
	MS_UCD_UNDEFINED = 1 << 0,
	MS_UCD_NUMBER = 1 << 1,    /* \p{N} */
	MS_UCD_LETTER = 1 << 2,    /* \p{L} */
	MS_UCD_SEPARATOR = 1 << 3, /* \p{Z} */
	MS_UCD_MARK = 1 << 4,      /* \p{M} */
	MS_UCD_PUNCT = 1 << 5,     /* \p{P} */
	MS_UCD_SYMBOL = 1 << 6,    /* \p{S} */
	MS_UCD_CONTROL = 1 << 7,   /* \p{C} */
	MS_UCD_SPACE = 1 << 8,     /* White_Space */
};

#define MS_UCD_MAX_CP 0x110000u

struct ms_ucd_range {
	uint32_t start;
	uint16_t cls;
};

/* The class bits of a code point; 0 for one past U+10FFFF (a 4-byte UTF-8
 * sequence can decode to such a value, as in llama.cpp). */
uint16_t ms_ucd_class(uint32_t cp);
/* The whole table (MS_UCD_MAX_CP entries), for inner loops. */
const uint16_t *ms_ucd_table(void);

/* Decodes text into code points as llama.cpp's unicode_cpts_from_utf8 does:
 * lead bytes decide the length, continuation bytes must be 10xxxxxx, any
 * failure consumes one byte and yields U+FFFD (overlong forms and
 * surrogates are accepted as llama.cpp accepts them). cps must hold len
 * entries; byte_off (may be NULL) gets each code point's byte offset, with
 * byte_off[n] = len. Returns n. */
size_t ms_utf8_decode(const char *text, size_t len, uint32_t *cps,
		      uint32_t *byte_off);

/* Encodes cp as UTF-8 into out (4 bytes room); returns the length, or 0 for
 * a value past U+10FFFF. */
size_t ms_utf8_encode(uint32_t cp, char *out);

/* The byte a GPT-2 byte-level character stands for, or -1. */
int ms_bytelevel_decode(uint32_t cp);
/* The byte-level character of a byte, as UTF-8 (1 or 2 bytes) and length. */
const char *ms_bytelevel_encode(uint8_t b, size_t *len);

#endif
