# moestream - top-level Makefile.
#
#   make                 build moestreamd, moestream, libmoestream.{a,so} into build/
#   make run             build, then the demo: a GLM-4.7-shaped model, moestreamd,
#                        a routing trace replayed through it, the stats
#                        (MODEL=/path/to/model.gguf for a real one)
#   make test            build and run every test (installs missing packages as root)
#   make check           the tests again under ASan+UBSan (build/san/)
#   make fuzz            libFuzzer targets for FUZZ_TIME seconds each (default 60)
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
LIBS        := -luring -lnuma -linih -lcjson -lpthread -lm

ifneq ($(NVCC),)
ALL_CFLAGS  += -DMS_HAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++
NVCCFLAGS   := -O2 -std=c++17 -Iinclude -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-Wno-format-truncation \
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
LIB_OBJ     := $(CORE_OBJ) $(KERN_OBJ)
TOOLS_OBJ   := $(call obj,$(filter-out tools/moestream.c,$(TOOLS_SRC)))
HELPER_OBJ  := $(call obj,$(TEST_HELPER))
TEST_BIN    := $(patsubst tests/%.c,$(O)/tests/%,$(TEST_SRC))

BINS        := $(O)/moestreamd $(O)/moestream $(O)/libmoestream.a $(O)/libmoestream.so

.PHONY: all deps deps-check run test check fuzz install clean tests ggml-ref
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

$(O)/moestream: $(O)/obj/tools/moestream.o $(O)/libms_tools.a $(O)/libmoestream.a
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) $(CUDA_LIBS)

$(O)/tests/%: $(O)/obj/tests/%.o $(HELPER_OBJ) $(O)/libms_tools.a $(O)/libmoestream.a
	@mkdir -p $(dir $@)
	$(call say,LD,$@)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS) $(CUDA_LIBS) -ldl

tests: $(BINS) $(TEST_BIN)

# ggml's reference library, fetched once with npm into a cache outside the
# repository; the tests that need it fail (never pass) when it cannot be had.
ggml-ref:
	@tests/fetch-ggml.sh >/dev/null || true

test:
	@mk/deps.sh install-test
	@$(MAKE) --no-print-directory tests
	@$(MAKE) --no-print-directory ggml-ref
	@MS_BUILD=$(O) tests/run.sh --timeout $(TEST_TIMEOUT) $(TEST_BIN)

check:
	@$(MAKE) --no-print-directory SANITIZER=address,undefined test

run:
	@mk/deps.sh install
	@$(MAKE) --no-print-directory all
	@MS_BUILD=$(O) MODEL='$(MODEL)' tools/run-demo.sh

# ---- fuzzing (clang + libFuzzer) -------------------------------------------
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN    := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_CFLAGS := -std=gnu11 -O1 -g $(filter-out -Wno-format-truncation,$(WARN)) -D_GNU_SOURCE -Iinclude -I/usr/include/cjson \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all

build/fuzz/%: tests/fuzz/%.c $(MODEL_SRC) include/moestream/*.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(MODEL_SRC) -lm

fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
		name=$$(basename $$f); corpus=tests/fuzz/corpus/$${name#fuzz_}; \
		mkdir -p build/fuzz/work-$$name; \
		echo "fuzz: $$name for $(FUZZ_TIME)s (seeds: $$corpus)"; \
		$$f -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
		    -artifact_prefix=build/fuzz/ build/fuzz/work-$$name $$corpus || exit 1; \
	done

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
	install -m 0644 etc/moestream.conf etc/moestreamd.service $(DESTDIR)$(PREFIX)/share/moestream/
	@echo "the sample config and the systemd unit are in $(PREFIX)/share/moestream: copy"
	@echo "moestream.conf to /etc/moestream/ and moestreamd.service to /etc/systemd/system/"
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@CUDA_LIBS@|$(if $(NVCC),-L$(CUDA_HOME)/lib64 -lcublas -lcudart,)|g' \
	    mk/moestream.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/moestream.pc

clean:
	rm -rf build

-include $(shell find $(O)/obj -name '*.d' 2>/dev/null)
