# moestream - top-level Makefile.
#
#   make                 build moestreamd, moestream, libmoestream.{a,so} into build/
#   make run             build, then the demo: a GLM-4.7-shaped model, moestreamd,
#                        a routing trace replayed through it, the stats
#                        (MODEL=/path/to/model.gguf for a real one)
#   make test            build and run every test (installs missing packages as root)
#   make check           the tests again under ASan+UBSan (build/san/)
#   make gpu-emu         the GPU tests (t_gpu*, t_kernel_cli) without a GPU: the
#                        kernels' own source built by g++ against a CPU emulation
#                        of CUDA (tests/cuda-emu/), run in build/emu/; checks
#                        indexing, tiling, barriers, shuffles, cp.async use,
#                        launch limits and the numbers against the C reference,
#                        not the GPU's float behaviour, the real cuBLAS, or any
#                        timing (on 2 cores ~20 s to compile, ~60 s of tests;
#                        EMU_SAN=1 or SANITIZER=... for ASan+UBSan, ~2 min;
#                        EMU_TESTS= to choose); then the kernel tests again
#                        with each CTA's threads run in reverse order, which
#                        finds a missing barrier that forward order hides
#                        (EMU_REVERSE_TESTS=, empty: none)
#   make ptx-loops       the fused matvec's unit and copy loops counted in PTX
#                        and in sm_90 machine code, per kernel (needs nvcc;
#                        no GPU): a measure to compare builds by
#                        (tools/ptx-loops.py; PTX_ARGS=--ops by kind)
#   make fuzz            libFuzzer targets for FUZZ_TIME seconds each (default 60)
#   make bench           the end-to-end benchmark (issue 15), as root: llama.cpp
#                        against moestream run (embedded and through moestreamd)
#                        on GLM-4.7 cut to 8 MoE layers with the Qwen3 tokenizer
#                        (build/bench/glm8.gguf, 13.4 GB, written once), under a
#                        limit of resident + 25% of the expert bytes + KV + 64 MiB;
#                        a few minutes (BENCH_ARGS="--json", "--sweep" for 10..100%,
#                        "--synthetic" for issue 7's trace replays)
#   make install         PREFIX=/usr/local DESTDIR=
#   make SANITIZER=address,undefined   any build with sanitizers (in build/san/)
#
# CUDA is optional: where nvcc exists (CUDA_HOME, else /usr/local/cuda)
# kernels/*.cu are built for sm_80/86/89/90/120 and linked into the tools;
# without it every GPU feature answers "built without CUDA".

VERSION     := 0.1.0
PREFIX      ?= /usr/local
DESTDIR     ?=
CC          ?= cc
SANITIZER   ?=
FUZZ_TIME   ?= 60
TEST_TIMEOUT ?= 300
# tests run this many at a time (tests/run.sh --jobs; the ones that hold
# memory limits or load the machine run alone first)
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

ifeq ($(SANITIZER),)
O           ?= build
else
O           ?= build/san
endif

CUDA_HOME   ?= /usr/local/cuda
NVCC        := $(wildcard $(CUDA_HOME)/bin/nvcc)
ifeq ($(NO_CUDA),1)
NVCC        :=
endif
# The GPUs the CUDA code is built for (sm_XX); `make CUDA_ARCHS=90 O=DIR`
# builds for Hopper alone (tools/gpu-check.sh's pack: one copy of the
# device code per binary, not five). Objects are not rebuilt when it
# changes: use a folder of its own.
CUDA_ARCHS  := 80 86 89 90 120

WARN        := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wvla -Wno-format-truncation
CFLAGS      ?= -O2 -g
ALL_CFLAGS  := -std=gnu11 $(CFLAGS) $(WARN) -fPIC -D_GNU_SOURCE \
               -DMS_VERSION=\"$(VERSION)\" -Iinclude -I/usr/include/cjson -MMD -MP
ALL_LDFLAGS := $(LDFLAGS)
ifneq ($(SANITIZER),)
ALL_CFLAGS  += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -fno-sanitize-recover=all
ALL_LDFLAGS += -fsanitize=$(SANITIZER)
endif
LIBS        := -luring -lnuma -linih -lcjson -lpcre2-8 -lpcre2-32 -lpthread -lm

ifneq ($(NVCC),)
ALL_CFLAGS  += -DMS_HAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++
# -MMD -MP: X.cu.d beside X.cu.o, so a header's change rebuilds the .cu
# objects that include it (kernels/*.cuh, include/moestream/*.h)
NVCCFLAGS   := -O2 -std=c++17 -Iinclude -MMD -MP -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-Wno-format-truncation \
               $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))
endif

# ---- sources, by room ------------------------------------------------------
MODEL_SRC   := $(wildcard model/*.c)
IOURING_SRC := $(wildcard iouring/*.c)
CACHE_SRC   := $(wildcard cache/*.c)
KERN_SRC    := $(filter-out kernels/gpu_nocuda.c,$(wildcard kernels/*.c))
CU_SRC      := $(wildcard kernels/*.cu)
ifeq ($(NVCC),)
KERN_SRC    += kernels/gpu_nocuda.c
CU_SRC      :=
endif
DAEMON_SRC  := $(filter-out daemon/moestreamd.c,$(wildcard daemon/*.c))
ENGINE_SRC  := $(wildcard engine/*.c)
API_SRC     := $(wildcard api/*.c)
TOOLS_SRC   := $(wildcard tools/*.c)
TEST_SRC    := $(wildcard tests/t_*.c)
TEST_HELPER := $(filter-out tests/t_%.c,$(wildcard tests/*.c))

obj = $(patsubst %.c,$(O)/obj/%.o,$(1))

# Quiet by default, V=1 shows the commands.
ifeq ($(V),1)
say =
else
say = @printf '  %-5s %s\n' '$(1)' '$(2)';
endif

CORE_OBJ    := $(call obj,$(MODEL_SRC) $(IOURING_SRC) $(CACHE_SRC) $(DAEMON_SRC))
KERN_OBJ    := $(call obj,$(KERN_SRC)) $(patsubst %.cu,$(O)/obj/%.cu.o,$(CU_SRC))
LIB_OBJ     := $(CORE_OBJ) $(KERN_OBJ) $(call obj,$(ENGINE_SRC))
# moestream serve's room: linked into the moestream command (and a test
# that uses it) only, so that nothing else needs libmicrohttpd
API_OBJ     := $(call obj,$(API_SRC))
API_LIBS    := -Wl,--as-needed -lmicrohttpd -Wl,--no-as-needed
TOOLS_OBJ   := $(call obj,$(filter-out tools/moestream.c,$(TOOLS_SRC)))
HELPER_OBJ  := $(call obj,$(TEST_HELPER))
TEST_BIN    := $(patsubst tests/%.c,$(O)/tests/%,$(TEST_SRC))

BINS        := $(O)/moestreamd $(O)/moestream $(O)/libmoestream.a $(O)/libmoestream.so

.PHONY: all deps deps-check run test check fuzz install clean tests ggml-ref bench unicode-tables
.PRECIOUS: $(O)/obj/%.o
.DEFAULT_GOAL := all

all: deps-check $(BINS)

deps-check:
	@mk/deps.sh check

deps:
	@mk/deps.sh install

$(O)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(call say,CC,$<)$(CC) $(ALL_CFLAGS) -c $< -o $@

$(O)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(call say,NVCC,$<)$(NVCC) $(NVCCFLAGS) -c $< -o $@

# The daemon knows no CUDA: it links the core rooms only.
$(O)/libms_core.a: $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(O)/libmoestream.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(O)/libmoestream.so: $(LIB_OBJ)
	$(call say,LD,$@)$(CC) -shared -Wl,-soname,libmoestream.so.0 $(ALL_LDFLAGS) -o $@ $^ $(LIBS) $(CUDA_LIBS)

$(O)/moestreamd: $(O)/obj/daemon/moestreamd.o $(O)/libms_core.a
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# The subcommands, as a library the tests can link too.
$(O)/libms_tools.a: $(TOOLS_OBJ)
	@mkdir -p $(dir $@)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(O)/libms_api.a: $(API_OBJ)
	@mkdir -p $(dir $@)
	$(call say,AR,$@)rm -f $@ && ar rcs $@ $^

$(O)/moestream: $(O)/obj/tools/moestream.o $(O)/libms_tools.a $(O)/libms_api.a $(O)/libmoestream.a
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) $(API_LIBS) $(CUDA_LIBS)

$(O)/tests/%: $(O)/obj/tests/%.o $(HELPER_OBJ) $(O)/libms_tools.a $(O)/libms_api.a $(O)/libmoestream.a
	@mkdir -p $(dir $@)
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) $(API_LIBS) $(CUDA_LIBS) -ldl

tests: $(BINS) $(TEST_BIN)

# The tokenizer's Unicode classes, generated from Debian's unicode-data and
# committed (t_unicode_tables checks that they are what the script writes).
unicode-tables:
	tools/gen-unicode.sh > engine/unicode_ranges.h

# ggml's reference library, fetched once with npm into a cache outside the
# repository; the tests that need it fail (never pass) when it cannot be had.
ggml-ref:
	@tests/fetch-ggml.sh >/dev/null || true

test:
	@mk/deps.sh install-test
	@$(MAKE) --no-print-directory tests
	@$(MAKE) --no-print-directory ggml-ref
	@MS_BUILD=$(O) tests/run.sh --timeout $(TEST_TIMEOUT) --jobs $(TEST_JOBS) $(TEST_BIN)

check:
	@$(MAKE) --no-print-directory SANITIZER=address,undefined test

# The GPU tests on a CPU emulation of CUDA (tests/cuda-emu/build.sh explains
# what it checks and what it cannot): this build's C objects, the .cu files
# through g++, the programs in EMU_O. No nvcc or GPU needed; a real GPU run
# (tools/gpu-check.sh) is still the verdict on the device.
EMU_O       ?= build/emu
# t_kernel_cli: the commands with a (emulated) GPU, ffn --device gpu included
EMU_TESTS   ?= $(patsubst tests/%.c,%,$(wildcard tests/t_gpu*.c)) t_kernel_cli
# run a second time with EMU_ORDER=reverse (tests/cuda-emu/include/cuda_emu.h,
# thread_order): the kernels' own tests, every kernel and shape class
EMU_REVERSE_TESTS ?= t_gpu_kernels t_gpu_ops
emu_reverse = $(filter $(EMU_TESTS),$(EMU_REVERSE_TESTS))
.PHONY: gpu-emu
gpu-emu: tests
	@$(MAKE) --no-print-directory ggml-ref
	@TESTS="$(EMU_TESTS)" EMU_SAN=$(if $(SANITIZER),1,$(EMU_SAN)) tests/cuda-emu/build.sh $(O) $(EMU_O)
	@MS_BUILD=$(EMU_O) tests/run.sh --timeout $(TEST_TIMEOUT) --jobs $(TEST_JOBS) $(addprefix $(EMU_O)/,$(EMU_TESTS))
ifneq ($(emu_reverse),)
	@echo "gpu-emu: again with each CTA's threads in reverse order (EMU_ORDER=reverse): $(emu_reverse)"
	@EMU_ORDER=reverse MS_BUILD=$(EMU_O) tests/run.sh --timeout $(TEST_TIMEOUT) --jobs $(TEST_JOBS) --logs $(EMU_O)/test-logs-reverse $(addprefix $(EMU_O)/,$(emu_reverse))
endif

.PHONY: ptx-loops
ptx-loops:
ifeq ($(NVCC),)
	@echo "ptx-loops: no nvcc (CUDA_HOME=$(CUDA_HOME)): the PTX comes from nvcc" >&2; exit 1
else
	@mkdir -p $(O)/ptx
	$(call say,NVCC,kernels/gpu_matvec.cu -ptx)$(NVCC) -O2 -std=c++17 -Iinclude -arch=sm_90 -ptx kernels/gpu_matvec.cu -o $(O)/ptx/gpu_matvec.ptx
	$(call say,NVCC,kernels/gpu_matvec.cu -cubin)$(NVCC) -O2 -std=c++17 -Iinclude -arch=sm_90 -cubin kernels/gpu_matvec.cu -o $(O)/ptx/gpu_matvec.cubin
	@python3 tools/ptx-loops.py $(O)/ptx/gpu_matvec.ptx --cubin $(O)/ptx/gpu_matvec.cubin $(PTX_ARGS)
endif

run:
	@mk/deps.sh install
	@$(MAKE) --no-print-directory all
	@MS_BUILD=$(O) MODEL='$(MODEL)' tools/run-demo.sh

# ---- benchmarks ---------------------------------------------------------------
# moestream bench e2e on the GLM-4.7 preset (8 MoE layers, Qwen3 tokenizer):
# llama.cpp against moestream run under one memory limit; tools/bench-e2e.sh
# writes the model once and says what it runs.
bench: all
	@mk/deps.sh install-bench || echo "bench: no gnuplot: --sweep writes its data and gnuplot script, no PNG"
	@MS_BUILD=$(O) tools/bench-e2e.sh $(BENCH_ARGS)

# ---- fuzzing (clang + libFuzzer) -------------------------------------------
# One binary per tests/fuzz/fuzz_NAME.c, built with clang's libFuzzer, ASan
# and UBSan from the sources it tests (compiled into it, so that they carry
# the coverage instrumentation), and run from its committed seeds in
# tests/fuzz/corpus/NAME for FUZZ_TIME seconds (new inputs go to
# build/fuzz/work-fuzz_NAME; the seeds are only read; tests/fuzz/run.sh).
# A crash leaves its input in build/fuzz/crash-NAME-*: fix the bug, then
# commit that file under tests/fuzz/corpus/NAME/ where t_fuzz_seeds /
# t_fuzz_seeds_more run it in every `make test`. FUZZ_TARGETS="config
# protocol" (or make fuzz-config) runs some of them; make -jN runs N at once.
#
#   gguf      the GGUF reader, the expert map and the   model/, engine/
#             vocabulary reader (ms_vocab_load)
#   protocol  the wire decoders and encoders            daemon/protocol.c, model/
#   config    the configuration parser (libinih)        daemon/config.c, and the
#             cache's defaults it reads: cache/, iouring/, model/
#   tokenize  the tokenizer on arbitrary bytes, with    engine/, model/
#             the Qwen3 vocabulary (run.sh writes build/fuzz/qwen3-vocab.gguf
#             with build/moestream and the tokenizer tests/fetch-ggml.sh fetched)
#   request   the OpenAI request bodies (libcjson), as  api/request.c
#             a chat and as a completion
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES  := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_CC     ?= clang
FUZZ_CFLAGS := -std=gnu11 -O1 -g $(filter-out -Wno-format-truncation,$(WARN)) -D_GNU_SOURCE -Iinclude -I/usr/include/cjson \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_OPTS   ?= -timeout=10 -rss_limit_mb=2048

# The vocabulary and the tokenizer only, not the rest of engine/ (the
# forward pass needs cache/, iouring/ and kernels/).
FUZZ_TOK_SRC       := engine/vocab.c engine/tokenizer.c engine/unicode.c
FUZZ_DEPS_gguf     := $(MODEL_SRC) $(FUZZ_TOK_SRC)
FUZZ_LIBS_gguf     := -lpcre2-8 -lpcre2-32 -lpthread -lm
FUZZ_DEPS_protocol := daemon/protocol.c $(MODEL_SRC)
FUZZ_LIBS_protocol := -lm
FUZZ_DEPS_config   := daemon/config.c $(CACHE_SRC) $(IOURING_SRC) $(MODEL_SRC)
FUZZ_LIBS_config   := -luring -lnuma -linih -lpthread -lm
FUZZ_DEPS_tokenize := $(FUZZ_TOK_SRC) $(MODEL_SRC)
FUZZ_LIBS_tokenize := -lpcre2-8 -lpcre2-32 -lpthread -lm
FUZZ_DEPS_request  := api/request.c
FUZZ_LIBS_request  := -lcjson -lm

# A target without its own lines above gets the model/ sources.
define fuzz_rule
build/fuzz/fuzz_$(1): tests/fuzz/fuzz_$(1).c $$(or $$(FUZZ_DEPS_$(1)),$$(MODEL_SRC)) \
		$$(wildcard include/moestream/*.h daemon/*.h engine/*.h api/*.h) Makefile
	@mkdir -p $$(dir $$@)
	@command -v $$(FUZZ_CC) >/dev/null || { echo "make fuzz needs $$(FUZZ_CC): apt-get install -y clang (Debian package clang), or FUZZ_CC=another libFuzzer compiler" >&2; exit 1; }
	$$(call say,FUZZ,$$@)$$(FUZZ_CC) $$(FUZZ_CFLAGS) -o $$@ $$< \
		$$(or $$(FUZZ_DEPS_$(1)),$$(MODEL_SRC)) $$(or $$(FUZZ_LIBS_$(1)),-lm)
endef
$(foreach n,$(FUZZ_NAMES),$(eval $(call fuzz_rule,$(n))))

# One phony fuzz-NAME per target, so that make -j2 fuzz runs two at once.
$(foreach n,$(FUZZ_NAMES),$(eval fuzz-$(n): build/fuzz/fuzz_$(n) ; \
	@tests/fuzz/run.sh $(n) $$(FUZZ_TIME) $$(FUZZ_OPTS)))
.PHONY: $(patsubst %,fuzz-%,$(FUZZ_NAMES))

fuzz: $(patsubst %,fuzz-%,$(FUZZ_TARGETS))

# ---- install ----------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	           $(DESTDIR)$(PREFIX)/include/moestream $(DESTDIR)$(PREFIX)/share/moestream
	install -m 0755 $(O)/moestreamd $(O)/moestream $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(O)/libmoestream.a $(DESTDIR)$(PREFIX)/lib/
	install -m 0755 $(O)/libmoestream.so $(DESTDIR)$(PREFIX)/lib/libmoestream.so.$(VERSION)
	ln -sf libmoestream.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmoestream.so.0
	ln -sf libmoestream.so.0 $(DESTDIR)$(PREFIX)/lib/libmoestream.so
	install -m 0644 include/moestream/*.h $(DESTDIR)$(PREFIX)/include/moestream/
	install -m 0644 etc/moestream.conf etc/moestreamd.service etc/moestream-serve.service $(DESTDIR)$(PREFIX)/share/moestream/
	@echo "the sample config and the systemd unit are in $(PREFIX)/share/moestream: copy"
	@echo "moestream.conf to /etc/moestream/ and moestreamd.service to /etc/systemd/system/"
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@CUDA_LIBS@|$(if $(NVCC),-L$(CUDA_HOME)/lib64 -lcublas -lcudart,)|g' \
	    mk/moestream.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/moestream.pc

clean:
	rm -rf build

-include $(shell find $(O)/obj -name '*.d' 2>/dev/null)
