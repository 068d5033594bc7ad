/*
 * t_ggml_writer - files written by moestream's GGUF writer are files ggml
 * reads: the demo model from `moestream mkmodel --preset tiny`, and a writer
 * file at alignment 128 holding every metadata type. ggml must accept them
 * and agree with our own reader on every key's type, every tensor's name,
 * type, shape, offset and size, and the data offset.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "ggml_ref.h"
#include "moestream/model.h"
#include "testutil.h"

static void compare(const struct ggml_ref *r, const char *path)
{
	struct gguf_init_params ip = { .no_alloc = true, .ctx = NULL };
	struct gguf_context *g = r->gguf_init_from_file(path, ip);
	T_CHECK(g != NULL, "ggml refuses %s", path);
	if (!g)
		return;
	struct ms_gguf *m;
	struct ms_err err = { 0 };
	if (ms_gguf_open(&m, path, &err))
		t_fatal("our reader refuses %s: %s", path, err.msg);

	T_EQ_U64(r->gguf_get_n_kv(g), m->n_kv);
	T_EQ_U64(r->gguf_get_n_tensors(g), m->n_tensors);
	T_EQ_U64(r->gguf_get_data_offset(g), m->data_offset);
	T_EQ_U64(r->gguf_get_alignment(g), m->alignment);
	for (uint64_t i = 0; i < m->n_kv; i++) {
		int64_t id = r->gguf_find_key(g, m->kv[i].key);
		T_CHECK(id >= 0, "ggml lacks key %s", m->kv[i].key);
		if (id >= 0)
			T_CHECK(r->gguf_get_kv_type(g, id) == (int)m->kv[i].type,
				"key %s: ggml type %d, ours %u", m->kv[i].key,
				r->gguf_get_kv_type(g, id), m->kv[i].type);
	}
	for (uint64_t i = 0; i < m->n_tensors; i++) {
		const struct ms_gguf_tensor *t = &m->tensors[i];
		int64_t id = r->gguf_find_tensor(g, t->name);
		T_CHECK(id >= 0, "ggml lacks tensor %s", t->name);
		if (id < 0)
			continue;
		T_CHECK(r->gguf_get_tensor_type(g, id) == (int)t->type &&
				r->gguf_get_tensor_offset(g, id) == t->offset &&
				r->gguf_get_tensor_size(g, id) == t->size,
			"%s: ggml type %d offset %zu size %zu; ours %u %llu %llu",
			t->name, r->gguf_get_tensor_type(g, id),
			r->gguf_get_tensor_offset(g, id),
			r->gguf_get_tensor_size(g, id), t->type,
			(unsigned long long)t->offset, (unsigned long long)t->size);
		const int64_t *ne = r->gguf_get_tensor_ne(g, id);
		for (int d = 0; d < 4; d++)
			T_CHECK(ne[d] == t->ne[d], "%s: ne[%d] ggml %lld ours %lld",
				t->name, d, (long long)ne[d], (long long)t->ne[d]);
	}
	printf("%s: ggml agrees on %llu keys, %llu tensors, data offset %llu\n",
	       path, (unsigned long long)m->n_kv,
	       (unsigned long long)m->n_tensors,
	       (unsigned long long)m->data_offset);
	ms_gguf_free(m);
	r->gguf_free(g);
}

int main(void)
{
	struct ggml_ref r;
	ggml_ref_load_or_fail(&r);
	char path[4096], cmd[8300];

	snprintf(path, sizeof(path), "%s/tiny.gguf", t_tmpdir());
	snprintf(cmd, sizeof(cmd), "%s mkmodel --preset tiny -o '%s' >/dev/null",
		 t_build_path("moestream"), path);
	if (t_run(cmd, NULL, 0) != 0)
		t_fatal("'%s' failed", cmd);
	compare(&r, path);

	/* Every metadata type, at a non-default alignment. */
	struct ms_gguf_writer *w;
	struct ms_err err = { 0 };
	if (ms_gguf_writer_init(&w, 128, &err))
		t_fatal("%s", err.msg);
	uint64_t u = 0x1122334455667788ull;
	double f = 3.25;
	const char *strs[3] = { "a", "", "ccc" };
	int32_t arr[5] = { -1, 2, -3, 4, -5 };
	int rc = 0;
	for (uint32_t t = 0; t < MS_GGUF_VTYPE_COUNT && !rc; t++) {
		char key[32];
		snprintf(key, sizeof(key), "test.%s", ms_gguf_vtype_name(t));
		if (t == MS_GGUF_STRING)
			rc = ms_gguf_writer_set_str(w, key, "value", &err);
		else if (t == MS_GGUF_ARRAY)
			rc = ms_gguf_writer_set_arr(w, key, MS_GGUF_I32, 5, arr, &err);
		else if (t == MS_GGUF_BOOL)
			rc = ms_gguf_writer_set_bool(w, key, true, &err);
		else
			rc = ms_gguf_writer_set(w, key, t,
						t == MS_GGUF_F64 ? (void *)&f : (void *)&u,
						&err);
	}
	if (!rc)
		rc = ms_gguf_writer_set_arr(w, "test.strings", MS_GGUF_STRING, 3,
					    strs, &err);
	int64_t ne[3] = { 256, 3, 2 };
	if (!rc)
		rc = ms_gguf_writer_add_tensor(w, "a", 3, ne, MS_TYPE_Q4_K, &err);
	ne[0] = 7;
	if (rc >= 0)
		rc = ms_gguf_writer_add_tensor(w, "b", 1, ne, MS_TYPE_F32, &err);
	if (rc < 0)
		t_fatal("writer: %s", err.msg);
	snprintf(path, sizeof(path), "%s/types.gguf", t_tmpdir());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ms_gguf_writer_write_meta(w, fd, &err) ||
	    ftruncate(fd, (off_t)ms_gguf_writer_file_size(w)))
		t_fatal("writing %s: %s", path, err.msg);
	close(fd);
	ms_gguf_writer_free(w);
	compare(&r, path);
	return t_done();
}
