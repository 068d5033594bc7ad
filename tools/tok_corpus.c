/*
 * tok_corpus.c - a seeded corpus of strings that exercises a tokenizer: the
 * text t_tokenize_ref compares with llama.cpp's and `bench tokenize` times.
 *
 * Twelve kinds, in turn (string i is of kind i % 12):
 *   prose in many scripts (sentences below, cut and recombined), words of
 *   the system's locales (/usr/share/i18n/locales: month and day names in
 *   each locale's script, written there as <Uxxxx>), C source
 *   (/usr/include), English documentation (/usr/share/doc), numbers of
 *   every length and shape, runs of spaces, tabs and mixed \r\n, emoji with
 *   ZWJ and skin tones (Debian unicode-data's emoji-zwj-sequences.txt and
 *   our own), invalid UTF-8 (stray continuation bytes, truncated sequences,
 *   overlong forms, surrogates, F5..FF), special-token texts inside text,
 *   random bytes, random code points (any plane), and mixtures of the rest.
 * Files that are missing only narrow the corpus; the kinds fall back to the
 * built-in text, so the corpus is the same for a seed on the same system.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/unicode.h"
#include "tok_corpus.h"
#include "tools.h"

static const char *const prose[] = {
	/* Latin with diacritics */
	"Příliš žluťoučký kůň úpěl ďábelské ódy.",
	"Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
	"Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en "
	"canoë au delà des îles.",
	"À noite, vovô Kowalsky vê o ímã cair no pé do pinguim queixoso.",
	"Pchnąć w tę łódź jeża lub ośm skrzyń fig.",
	"Árvíztűrő tükörfúrógép, és Þórður sá ð-ið.",
	"The quick brown fox jumps over the lazy dog. It's what we'd've done, "
	"isn't it? THEY'LL SEE.",
	/* Cyrillic */
	"Съешь же ещё этих мягких французских булок, да выпей чаю.",
	"В чащах юга жил бы цитрус? Да, но фальшивый экземпляр!",
	"Ґудзик, їжак і щоденник — українська абетка.",
	/* Greek */
	"Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Γαζέες καὶ μυρτιὲς δὲν θὰ βρῶ πιά.",
	/* Arabic */
	"نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق.",
	"صِفْ خَلْقَ خَوْدٍ كَمِثْلِ الشَّمْسِ إِذْ بَزَغَتْ",
	/* Hebrew */
	"דג סקרן שט בים מאוכזב ולפתע מצא חברה.",
	/* Devanagari */
	"ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले "
	"विष्णुवतार भगवान श्रीराम।",
	"नमस्ते दुनिया! क्षत्रिय ज्ञान श्री",
	/* Thai */
	"เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน",
	/* Chinese */
	"我能吞下玻璃而不伤身体。天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。",
	"这是一个测试：混合English和中文，还有数字１２３和标点！",
	/* Japanese */
	"いろはにほへと ちりぬるを わかよたれそ つねならむ。カタカナとひらがな、"
	"漢字の混じった文章です。",
	"ｱｲｳｴｵ 半角カナ と 全角ＡＢＣ、１２３。",
	/* Korean */
	"다람쥐 헌 쳇바퀴에 타고파. 키스의 고유조건은 입술끼리 만나야 하고 특별한 "
	"기술은 필요치 않다.",
	/* others */
	"Բարեւ աշխարհ։ გამარჯობა მსოფლიო. ሰላም ልዑል።",
	"Tiếng Việt có dấu: Đây là một câu thử nghiệm với nhiều dấu thanh.",
	"ᚠᛇᚻ᛫ᛒᛦᚦ ᚦᛖᚱᛘᚨ. 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙: ∀x∈ℝ, x²≥0 ∑∫√∞ ≠ ≈",
	"a\xcc\x81 e\xcc\x88 n\xcc\x83 (combining marks) ﬁ ﬂ Å Ω ℃ ① Ⅻ ½",
};

static const char *const code[] = {
	"int main(int argc, char **argv) {\n\tif (argc < 2)\n\t\treturn 1;\n}\n",
	"def f(x):\n    return {'a': [1, 2.5e-3, None], \"b\": x ** 2}\n\n",
	"for (size_t i = 0; i < n; i++) { s += a[i] * b[i]; } // dot\r\n",
	"const re = /^(?:\\d{3})-\\w+$/gi; console.log(`${x}`);\n",
	"SELECT id, name FROM users WHERE age >= 18 AND email LIKE '%@x.org';",
	"    <div class=\"x\"><a href='https://example.org/?q=1&r=2'>link</a></div>",
	"fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![]; Ok(()) }",
	"#!/bin/sh\nset -eu\nfor f in *.txt; do echo \"$f\" | tr 'a-z' 'A-Z'; done\n",
};

static const char *const specials[] = {
	"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
	"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|vision_start|>",
	"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
	"<｜Assistant｜>", "<|start|>", "<|channel|>", "<|message|>", "<|end|>",
	"<|return|>", "<|startoftext|>", "<|constrain|>", "<|reserved_200000|>",
	"<|im_sta", "im_end|>", "<|", "|>", "<｜", "▁",
};

static const uint32_t script_ranges[][2] = {
	{ 0x0020, 0x007E }, { 0x00A0, 0x024F }, { 0x0300, 0x036F },
	{ 0x0370, 0x03FF }, { 0x0400, 0x04FF }, { 0x0590, 0x05FF },
	{ 0x0600, 0x06FF }, { 0x0900, 0x097F }, { 0x0E00, 0x0E7F },
	{ 0x1100, 0x11FF }, { 0x2000, 0x206F }, { 0x2070, 0x218F },
	{ 0x2190, 0x23FF }, { 0x3000, 0x30FF }, { 0x3400, 0x4DBF },
	{ 0x4E00, 0x9FFF }, { 0xAC00, 0xD7AF }, { 0xFF00, 0xFFEF },
	{ 0x1F300, 0x1FAFF }, { 0x20000, 0x2A6DF },
};

struct buf {
	char *p;
	size_t n, cap;
};

static int bput(struct buf *b, const void *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t c = b->cap ? b->cap : 256;
		while (c < b->n + n + 1)
			c *= 2;
		char *q = realloc(b->p, c);
		if (!q)
			return -ENOMEM;
		b->p = q;
		b->cap = c;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return 0;
}

static int bstr(struct buf *b, const char *s)
{
	return bput(b, s, strlen(s));
}

static int bcp(struct buf *b, uint32_t cp)
{
	char o[4];
	return bput(b, o, ms_utf8_encode(cp, o));
}

/* ---- text found on the system --------------------------------------------------- */

struct pool {
	struct buf text;      /* all pieces, NUL-separated */
	size_t *off;
	size_t n, cap;
};

static int pool_add(struct pool *p, const char *s, size_t n)
{
	if (!n)
		return 0;
	if (p->n == p->cap) {
		size_t c = p->cap ? p->cap * 2 : 256;
		size_t *q = realloc(p->off, c * sizeof(*q));
		if (!q)
			return -ENOMEM;
		p->off = q;
		p->cap = c;
	}
	p->off[p->n++] = p->text.n;
	if (bput(&p->text, s, n) || bput(&p->text, "", 1))
		return -ENOMEM;
	return 0;
}

static const char *pool_get(const struct pool *p, uint64_t r)
{
	return p->text.p + p->off[r % p->n];
}

static void pool_free(struct pool *p)
{
	free(p->text.p);
	free(p->off);
}

/* Files of a folder in name order (so the corpus is stable), up to max. */
static int list_dir(const char *dir, const char *suffix, char ***out, size_t max)
{
	struct dirent **ents;
	int n = scandir(dir, &ents, NULL, alphasort);
	if (n < 0)
		return 0;
	char **names = calloc((size_t)n + 1, sizeof(*names));
	size_t k = 0;
	for (int i = 0; i < n; i++) {
		const char *nm = ents[i]->d_name;
		size_t l = strlen(nm), sl = suffix ? strlen(suffix) : 0;
		if (names && k < max && nm[0] != '.' &&
		    (!suffix || (l > sl && !strcmp(nm + l - sl, suffix))) &&
		    asprintf(&names[k], "%s/%s", dir, nm) >= 0)
			k++;
		free(ents[i]);
	}
	free(ents);
	*out = names;
	return (int)k;
}

static char *slurp(const char *path, size_t max, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *b = malloc(max + 1);
	size_t n = b ? fread(b, 1, max, f) : 0;
	fclose(f);
	if (b)
		b[n] = '\0';
	*len = n;
	return b;
}

/* Locale files write text as <U0412><U043E>...: each run of such escapes
 * becomes one piece of real text in the locale's script. */
static void load_locales(struct pool *p)
{
	char **names = NULL;
	int n = list_dir("/usr/share/i18n/locales", NULL, &names, 4000);
	for (int i = 0; i < n; i++) {
		size_t len;
		char *t = slurp(names[i], 1 << 20, &len);
		struct buf w = { 0 };
		for (size_t j = 0; t && j < len; j++) {
			unsigned cp;
			int used;
			if (t[j] == '<' && sscanf(t + j, "<U%x>%n", &cp, &used) == 1 &&
			    used > 3 && cp >= 0x80 && cp < 0x110000 &&
			    !(cp >= 0xD800 && cp < 0xE000)) {
				bcp(&w, cp);
				j += (size_t)used - 1;
				continue;
			}
			if (w.n >= 2)
				pool_add(p, w.p, w.n);
			w.n = 0;
		}
		free(w.p);
		free(t);
		free(names[i]);
	}
	free(names);
}

/* Slices of the text files in a folder (recursing one level). */
static void load_files(struct pool *p, const char *dir, const char *suffix,
		       size_t max_files, uint64_t *rng)
{
	char **names = NULL;
	int n = list_dir(dir, suffix, &names, max_files);
	for (int i = 0; i < n; i++) {
		size_t len;
		char *t = slurp(names[i], 64 << 10, &len);
		if (!t) {
			/* a folder: its copyright or README */
			char sub[4096];
			snprintf(sub, sizeof(sub), "%s/copyright", names[i]);
			t = slurp(sub, 64 << 10, &len);
		}
		if (t && len && !memchr(t, 0, len))
			for (int k = 0; k < 4; k++) {
				size_t a = tool_splitmix(rng) % len;
				size_t l = 20 + tool_splitmix(rng) % 400;
				pool_add(p, t + a, a + l > len ? len - a : l);
			}
		free(t);
		free(names[i]);
	}
	free(names);
}

/* emoji-zwj-sequences.txt: "1F468 200D 1F469 ... ; RGI_Emoji_ZWJ_Sequence" */
static void load_zwj(struct pool *p)
{
	size_t len;
	char *t = slurp("/usr/share/unicode/emoji/emoji-zwj-sequences.txt",
			1 << 20, &len);
	for (char *line = t; line && *line;) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (*line != '#' && strchr(line, ';')) {
			struct buf w = { 0 };
			char *s = line;
			unsigned cp;
			int used;
			while (sscanf(s, " %x%n", &cp, &used) == 1 && cp < 0x110000) {
				bcp(&w, cp);
				s += used;
			}
			if (w.n)
				pool_add(p, w.p, w.n);
			free(w.p);
		}
		line = nl ? nl + 1 : NULL;
	}
	free(t);
}

/* ---- the kinds ----------------------------------------------------------------- */

static const char *pick(const char *const *a, size_t n, uint64_t *rng)
{
	return a[tool_splitmix(rng) % n];
}

#define PICK(a, rng) pick(a, sizeof(a) / sizeof(a[0]), rng)

/* A cut of a built-in sentence at code point boundaries. */
static int prose_cut(struct buf *b, uint64_t *rng)
{
	const char *s = PICK(prose, rng);
	size_t n = strlen(s), a = tool_splitmix(rng) % n, e;
	while (a && ((unsigned char)s[a] & 0xC0) == 0x80)
		a--;
	e = a + 1 + tool_splitmix(rng) % (n - a);
	while (e < n && ((unsigned char)s[e] & 0xC0) == 0x80)
		e++;
	return bput(b, s + a, e - a);
}

static int numbers(struct buf *b, uint64_t *rng)
{
	int rc = 0;
	int k = 1 + (int)(tool_splitmix(rng) % 4);
	for (int i = 0; i < k && !rc; i++) {
		unsigned len = 1 + (unsigned)(tool_splitmix(rng) % 40);
		uint64_t shape = tool_splitmix(rng) % 8;
		char d[64];
		for (unsigned j = 0; j < len; j++)
			d[j] = (char)('0' + tool_splitmix(rng) % 10);
		d[len] = '\0';
		switch (shape) {
		case 0: rc = bstr(b, "-"); break;
		case 1: rc = bstr(b, "$"); break;
		case 2: rc = bstr(b, " x"); break;
		default: break;
		}
		if (!rc)
			rc = bstr(b, d);
		if (!rc && shape == 3)
			rc = bstr(b, ".5e-10");
		if (!rc && shape == 4)
			rc = bstr(b, ",000.25%");
		if (!rc && shape == 5)
			rc = bcp(b, 0x0660 + (uint32_t)(tool_splitmix(rng) % 10));
		if (!rc)
			rc = bstr(b, tool_splitmix(rng) % 2 ? " " : "");
	}
	return rc;
}

static int spaces(struct buf *b, uint64_t *rng)
{
	static const char *const ws[] = { " ", "  ", "\t", "\n", "\r\n", "\r",
					  "\n\n", " \n ", "\t \t", "\xc2\xa0",
					  "\xe3\x80\x80", "\xe2\x80\x83", "\v",
					  "\f" };
	static const char *const words[] = { "word", "x", "A", "ß", "日本",
					     "42", "!", "'s", "foo.bar" };
	int rc = 0, k = 1 + (int)(tool_splitmix(rng) % 8);
	for (int i = 0; i < k && !rc; i++) {
		int r = 1 + (int)(tool_splitmix(rng) % 6);
		for (int j = 0; j < r && !rc; j++)
			rc = bstr(b, PICK(ws, rng));
		if (!rc && tool_splitmix(rng) % 3)
			rc = bstr(b, PICK(words, rng));
	}
	return rc;
}

static int emoji(struct buf *b, const struct pool *zwj, uint64_t *rng)
{
	static const uint32_t base[] = { 0x1F44D, 0x1F44B, 0x1F9D1, 0x1F469,
					 0x1F468, 0x270B, 0x1F590, 0x1F3C3 };
	int rc = 0, k = 1 + (int)(tool_splitmix(rng) % 5);
	for (int i = 0; i < k && !rc; i++) {
		switch (tool_splitmix(rng) % 4) {
		case 0:
			if (zwj->n) {
				rc = bstr(b, pool_get(zwj, tool_splitmix(rng)));
				break;
			}
			/* fall through */
		case 1: /* a skin tone */
			rc = bcp(b, base[tool_splitmix(rng) % 8]);
			if (!rc)
				rc = bcp(b, 0x1F3FB + (uint32_t)(tool_splitmix(rng) % 5));
			break;
		case 2: /* family by hand, with ZWJ and VS16 */
			rc = bcp(b, 0x1F469) || bcp(b, 0x200D) || bcp(b, 0x2764) ||
			     bcp(b, 0xFE0F) || bcp(b, 0x200D) || bcp(b, 0x1F468);
			break;
		default: /* a flag */
			rc = bcp(b, 0x1F1E6 + (uint32_t)(tool_splitmix(rng) % 26)) ||
			     bcp(b, 0x1F1E6 + (uint32_t)(tool_splitmix(rng) % 26));
		}
		if (!rc && tool_splitmix(rng) % 2)
			rc = bstr(b, tool_splitmix(rng) % 2 ? " ok " : "text");
	}
	return rc;
}

static int invalid(struct buf *b, uint64_t *rng)
{
	static const char *const bad[] = {
		"\x80", "\xbf", "\xc3", "\xe6\x97", "\xf0\x9f\x98", "\xc0\x80",
		"\xe0\x80\xaf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xf4\x90\x80\x80",
		"\xf5", "\xf8\x88\x80\x80\x80", "\xfe", "\xff", "\xc3\x28",
		"\xe2\x28\xa1", "\xf0\x28\x8c\x28",
	};
	int rc = prose_cut(b, rng);
	int k = 1 + (int)(tool_splitmix(rng) % 4);
	for (int i = 0; i < k && !rc; i++) {
		const char *x = PICK(bad, rng);
		size_t at = b->n ? tool_splitmix(rng) % b->n : 0;
		size_t xl = strlen(x);
		if ((rc = bput(b, x, xl)))
			break;
		memmove(b->p + at + xl, b->p + at, b->n - xl - at);
		memcpy(b->p + at, x, xl);
	}
	return rc;
}

static int special_text(struct buf *b, uint64_t *rng)
{
	int rc = 0, k = 1 + (int)(tool_splitmix(rng) % 5);
	for (int i = 0; i < k && !rc; i++) {
		rc = bstr(b, PICK(specials, rng));
		if (!rc && tool_splitmix(rng) % 2)
			rc = prose_cut(b, rng);
		if (!rc && tool_splitmix(rng) % 3 == 0)
			rc = bstr(b, tool_splitmix(rng) % 2 ? "\n" : " ");
	}
	return rc;
}

static int random_bytes(struct buf *b, uint64_t *rng)
{
	size_t n = 1 + tool_splitmix(rng) % 200;
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		char c = (char)tool_splitmix(rng);
		rc = bput(b, &c, 1);
	}
	return rc;
}

static int random_cps(struct buf *b, uint64_t *rng)
{
	size_t n = 1 + tool_splitmix(rng) % 60;
	size_t nr = sizeof(script_ranges) / sizeof(script_ranges[0]);
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		uint32_t cp;
		if (tool_splitmix(rng) % 4 == 0) {
			cp = (uint32_t)(tool_splitmix(rng) % 0x110000);
		} else {
			const uint32_t *r = script_ranges[tool_splitmix(rng) % nr];
			cp = r[0] + (uint32_t)(tool_splitmix(rng) % (r[1] - r[0] + 1));
		}
		if (cp >= 0xD800 && cp < 0xE000)
			cp = 0xFFFD; /* a surrogate is no valid UTF-8 */
		rc = bcp(b, cp);
	}
	return rc;
}

bool tok_corpus_valid_utf8(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = u[i];
		size_t k;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xC2 && c <= 0xDF) {
			k = 2, cp = c & 0x1F, min = 0x80;
		} else if (c >= 0xE0 && c <= 0xEF) {
			k = 3, cp = c & 0x0F, min = 0x800;
		} else if (c >= 0xF0 && c <= 0xF4) {
			k = 4, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if (i + k > n)
			return false;
		for (size_t j = 1; j < k; j++) {
			if ((u[i + j] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (u[i + j] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
			return false;
		i += k;
	}
	return true;
}

/* llama.cpp's UTF-8 decoder takes F0..F7 with three continuation bytes as
 * a code point even past U+10FFFF, then throws while re-encoding it, which
 * ends the process (std::terminate through the C API). Such strings cannot
 * be compared; ours must still tokenize them (to U+FFFD's tokens). */
bool tok_corpus_llama_aborts(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = u[i];
		size_t k = c < 0x80 ? 1 : !(c & 0x40) ? 0 : !(c & 0x20) ? 2
			 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
		bool ok = k && i + k <= n;
		for (size_t j = 1; ok && j < k; j++)
			ok = (u[i + j] & 0xC0) == 0x80;
		if (!ok) {
			i++;
			continue;
		}
		if (k == 4) {
			uint32_t cp = (c & 7u) << 18 | (u[i + 1] & 0x3Fu) << 12 |
				      (u[i + 2] & 0x3Fu) << 6 | (u[i + 3] & 0x3Fu);
			if (cp > 0x10FFFF)
				return true;
		}
		i += k;
	}
	return false;
}

void tok_corpus_free(struct tok_corpus *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		free(c->s[i]);
	free(c->s);
	free(c->len);
	free(c->kind);
	memset(c, 0, sizeof(*c));
}

const char *const tok_corpus_kinds[TOK_CORPUS_KINDS] = {
	"prose", "locale words", "C source", "documentation", "numbers",
	"white space", "emoji", "invalid UTF-8", "special tokens",
	"random bytes", "random code points", "mixtures",
};

int tok_corpus_make(struct tok_corpus *c, size_t n, uint64_t seed)
{
	memset(c, 0, sizeof(*c));
	uint64_t rng = seed ^ 0x746f6b656e697a65ull, frng = 1;
	struct pool loc = { 0 }, src = { 0 }, doc = { 0 }, zwj = { 0 };
	load_locales(&loc);
	load_files(&src, "/usr/include", ".h", 200, &frng);
	load_files(&doc, "/usr/share/doc", NULL, 300, &frng);
	load_zwj(&zwj);
	c->s = calloc(n ? n : 1, sizeof(*c->s));
	c->len = calloc(n ? n : 1, sizeof(*c->len));
	c->kind = calloc(n ? n : 1, sizeof(*c->kind));
	int rc = c->s && c->len && c->kind ? 0 : -ENOMEM;
	for (size_t i = 0; i < n && !rc; i++) {
		struct buf b = { 0 };
		int kind = (int)(i % TOK_CORPUS_KINDS);
		int parts = kind == 11 ? 2 + (int)(tool_splitmix(&rng) % 3) : 1;
		for (int p = 0; p < parts && !rc; p++) {
			int k = kind == 11 ? (int)(tool_splitmix(&rng) % 11) : kind;
			switch (k) {
			case 0: {
				int m = 1 + (int)(tool_splitmix(&rng) % 3);
				for (int j = 0; j < m && !rc; j++)
					rc = prose_cut(&b, &rng) ||
					     bstr(&b, j + 1 < m ? " " : "");
				break;
			}
			case 1:
				if (loc.n) {
					int m = 1 + (int)(tool_splitmix(&rng) % 6);
					for (int j = 0; j < m && !rc; j++)
						rc = bstr(&b, pool_get(&loc, tool_splitmix(&rng))) ||
						     bstr(&b, j + 1 < m ? " " : "");
				} else {
					rc = prose_cut(&b, &rng);
				}
				break;
			case 2:
				rc = src.n ? bstr(&b, pool_get(&src, tool_splitmix(&rng)))
					   : bstr(&b, PICK(code, &rng));
				if (!rc && tool_splitmix(&rng) % 2)
					rc = bstr(&b, PICK(code, &rng));
				break;
			case 3:
				rc = doc.n ? bstr(&b, pool_get(&doc, tool_splitmix(&rng)))
					   : prose_cut(&b, &rng);
				break;
			case 4: rc = numbers(&b, &rng); break;
			case 5: rc = spaces(&b, &rng); break;
			case 6: rc = emoji(&b, &zwj, &rng); break;
			case 7: rc = invalid(&b, &rng); break;
			case 8: rc = special_text(&b, &rng); break;
			case 9: rc = random_bytes(&b, &rng); break;
			default: rc = random_cps(&b, &rng); break;
			}
		}
		if (!rc && !b.p)
			rc = bstr(&b, "");
		if (rc) {
			free(b.p);
			break;
		}
		c->s[i] = b.p;
		c->len[i] = b.n;
		c->kind[i] = (uint8_t)kind;
		c->n = i + 1;
	}
	pool_free(&loc);
	pool_free(&src);
	pool_free(&doc);
	pool_free(&zwj);
	if (rc)
		tok_corpus_free(c);
	return rc;
}
