/*
 * t_unicode_tables - engine/unicode_ranges.h is what tools/gen-unicode.sh
 * writes from Debian's unicode-data (so the committed table is generated,
 * not edited), and spot checks of the classes the pre-tokenizers rely on.
 */
#include <string.h>

#include "../engine/unicode.h"
#include "testutil.h"

int main(void)
{
	const char *data = "/usr/share/unicode/UnicodeData.txt";
	FILE *f = fopen(data, "r");
	if (!f)
		t_skip("%s is missing (apt-get install unicode-data): cannot "
		       "regenerate the table", data);
	fclose(f);
	char gen[4096], hdr[4096], cmd[8192];
	const char *p = t_source_path("tools/gen-unicode.sh", 3);
	if (!p)
		t_fatal("tools/gen-unicode.sh not found from here");
	snprintf(gen, sizeof(gen), "%s", p);
	p = t_source_path("engine/unicode_ranges.h", 3);
	if (!p)
		t_fatal("engine/unicode_ranges.h not found from here");
	snprintf(hdr, sizeof(hdr), "%s", p);
	char *out = NULL, *want = t_read_text(hdr);
	snprintf(cmd, sizeof(cmd), "sh '%s' '%s'", gen, data);
	int rc = t_run(cmd, &out, 16 << 20);
	T_CHECK(rc == 0, "'%s' exited %d", cmd, rc);
	T_CHECK(out && want && !strcmp(out, want),
		"%s differs from what %s writes now: run 'make unicode-tables'",
		hdr, gen);
	free(out);
	free(want);

	static const struct {
		uint32_t cp;
		uint16_t cls;
	} spot[] = {
		{ 'a', MS_UCD_LETTER }, { '7', MS_UCD_NUMBER },
		{ ' ', MS_UCD_SEPARATOR | MS_UCD_SPACE },
		{ '\n', MS_UCD_CONTROL | MS_UCD_SPACE }, { 0x01, MS_UCD_CONTROL },
		{ '~', MS_UCD_SYMBOL }, { '_', MS_UCD_PUNCT },
		{ 0x0301, MS_UCD_MARK }, { 0x00A0, MS_UCD_SEPARATOR | MS_UCD_SPACE },
		{ 0x0085, MS_UCD_CONTROL | MS_UCD_SPACE }, { 0x4E2D, MS_UCD_LETTER },
		{ 0xAC00, MS_UCD_LETTER }, { 0x20000, MS_UCD_LETTER },
		{ 0x0660, MS_UCD_NUMBER }, { 0x1F600, MS_UCD_SYMBOL },
		{ 0xFFFD, MS_UCD_SYMBOL }, { 0xE000, MS_UCD_CONTROL },
		{ 0x0378, MS_UCD_UNDEFINED }, { 0x3000, MS_UCD_SEPARATOR | MS_UCD_SPACE },
		{ 0x10FFFF, MS_UCD_UNDEFINED }, { 0x110000, 0 },
	};
	for (size_t i = 0; i < sizeof(spot) / sizeof(spot[0]); i++)
		T_CHECK(ms_ucd_class(spot[i].cp) == spot[i].cls,
			"U+%04X: class 0x%x, expected 0x%x", spot[i].cp,
			ms_ucd_class(spot[i].cp), spot[i].cls);
	return t_done();
}
