# ounce build. `make` builds ./ounce; `make demo` trains the demo model and samples; `make test` runs
# the CPU suite (unit tests, CLI end-to-end tests, then the unit tests again under ASan/UBSan).
# `make CUDA=1` adds the CUDA backend (sm_90). `make fuzz SECONDS=N` runs every libFuzzer target in
# tests/fuzz/ for N seconds (clang; see docs/testing.md#fuzzing).

CC      ?= gcc
OPT     ?= -O3 -march=native
# OpenBLAS's OpenMP build: our OpenMP loops and its GEMMs then share one thread pool. With the
# pthread build (Debian's default alternative) the two pools spin against each other on small
# cores counts, measured 14x slower on the tiny preset with 2 cores.
OPENBLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
OPENBLAS_INC ?= /usr/include/x86_64-linux-gnu/openblas-openmp
CJSON_INC    ?= /usr/include/cjson
LIBDIR       ?= /usr/lib/x86_64-linux-gnu
CFLAGS  += -std=c11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -fopenmp $(OPT) -g -Isrc \
           -I$(OPENBLAS_INC) -I$(CJSON_INC)
LDLIBS  += -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -lcjson -lpcre2-8 -lm
LDFLAGS += -fopenmp

# A CUDA build keeps its objects apart: the stub and the real backend must never mix.
BUILD   ?= $(if $(filter 1,$(CUDA)),build-cuda,build)
LIB_SRC := $(sort $(filter-out src/main.c src/cli/%,$(wildcard src/*.c src/*/*.c src/*/*/*.c)))
CLI_SRC := src/main.c $(sort $(wildcard src/cli/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
# ---- CUDA (sm_90). `make CUDA=1` links the GPU backend in; without it src/backend/cuda/cuda_stub.c
# answers --device cuda with one clear line. `cuda-check` compiles the .cu files (objects only) and
# the GPU test, so a CUDA compile error fails `make test` on any machine with nvcc, GPU or not.
NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),/usr/local/cuda/bin/nvcc)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
             -DOZ_HAVE_CUDA -Isrc -I/usr/include/cjson
CUDA_SRC  := $(sort $(wildcard src/backend/cuda/*.cu))
# cuDNN (the fused bf16 attention, backend/cuda/cuda_sdpa.cu) is linked as needed: a binary that
# never calls it still starts where cuDNN is not installed. ounce built with CUDA=1 calls it (the
# bf16 attention ops), so it needs cuDNN 9 at start-up; the CPU build never links it.
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcusolver -lcublasLt -lcublas -lcudart \
             -Wl,--as-needed -lcudnn -Wl,--no-as-needed -lstdc++
ifeq ($(CUDA),1)
CFLAGS  += -DOZ_HAVE_CUDA -I$(CUDA_HOME)/include
LIB_OBJ += $(CUDA_SRC:%.cu=$(BUILD)/%.o)
LDLIBS  += $(CUDA_LIBS)
endif

TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps demo test unit e2e sanitize bench clean cuda-check gpu-test fuzz fuzz-build fuzz-replay
all: ounce

ounce: $(BUILD)/libounce.a $(CLI_OBJ)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libounce.a $(LDLIBS)

# The same binary inside a build directory (the sanitizer build runs the CLI tests with it).
$(BUILD)/ounce: $(BUILD)/libounce.a $(CLI_OBJ)
	@$(if $(V),,echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libounce.a $(LDLIBS)

$(BUILD)/libounce.a: $(LIB_OBJ)
	@rm -f $@
	$(Q)ar rcs $@ $^

# The commands without main(), for programs that call them (the fuzz target of the CLI's arguments).
$(BUILD)/libounce-cli.a: $(filter-out $(BUILD)/src/main.o,$(CLI_OBJ))
	@rm -f $@
	$(Q)ar rcs $@ $^

# V=1 shows the full commands.
Q := $(if $(V),,@)

# Before the first compile in a build directory, tools/check-deps.sh says which package is missing
# (one line each, and how to install it) rather than letting the compiler fail on a header. The
# stamp keeps it to once; objects only wait for it (order-only), so it never rebuilds them.
DEPS_STAMP := $(BUILD)/.deps-ok
$(DEPS_STAMP): tools/check-deps.sh
	$(Q)CC='$(CC)' OPENBLAS_INC='$(OPENBLAS_INC)' OPENBLAS_DIR='$(OPENBLAS_DIR)' CJSON_INC='$(CJSON_INC)' \
		LIBDIR='$(LIBDIR)' NVCC='$(NVCC)' CUDA_HOME='$(CUDA_HOME)' OZ_DEPS_ROOT='$(OZ_DEPS_ROOT)' \
		sh tools/check-deps.sh $(if $(filter 1,$(CUDA)),--cuda)
	@mkdir -p $(dir $@)
	@touch $@
$(LIB_OBJ) $(CLI_OBJ): | $(DEPS_STAMP)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libounce.a tests/harness.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

# The LD_PRELOAD shim tests/e2e.sh checks the commit order of every atomic write with.
$(BUILD)/tests/commit_shim.so: tests/commit_shim.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) -std=c11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -O2 -shared -fPIC -o $@ $< -ldl

# Development helpers (tools/*.c), e.g. build/tools/logits for tools/check_transformers.py.
$(BUILD)/tools/%: tools/%.c $(BUILD)/libounce.a
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libounce.a
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.cu src/backend/cuda/cuda_internal.h src/backend/cuda/cuda_sdpa.h src/backend/backend.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# quant.h specifies a*b + c with two roundings; nvcc would contract it into one FMA and the GPU's
# 8-bit states and SR codes would no longer be the CPU's bit for bit.
$(BUILD)/src/backend/cuda/cuda_quant.o: NVCCFLAGS += -fmad=false

# GPU tests: built with CUDA=1, run on a machine with a GPU (tools/gpu_check.sh).
GPU_TEST_BIN := $(BUILD)/tests/gpu/test_cuda $(BUILD)/tests/gpu/test_bf16 $(BUILD)/tests/gpu/test_sdpa
$(BUILD)/tests/gpu/%: tests/gpu/%.c $(BUILD)/libounce.a tests/harness.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

# The fused attention's test and benchmark need only cuda_sdpa.o (and util/) from the library, so
# they link the rest as needed: they run where OpenBLAS, cJSON and PCRE2 are not installed.
$(BUILD)/tests/gpu/test_sdpa: tests/gpu/test_sdpa.c $(BUILD)/libounce.a tests/harness.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) -Wl,--as-needed $(LDLIBS)

$(BUILD)/bench/gpu_sdpa: bench/gpu_sdpa.c $(BUILD)/libounce.a
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) -Wl,--as-needed $(LDLIBS)

# ---- Fuzzing: one libFuzzer target per parser and encoder (tests/fuzz/fuzz_*.c), built with clang,
# ASan and UBSan in build-fuzz (the library too, with coverage instrumentation). `fuzz-build` says
# "skipped" and builds nothing where clang or libFuzzer is missing (tests/fuzz/run.sh --probe);
# `make fuzz` then fails, `make test` counts the targets as skipped with that reason.
FUZZ_CC    ?= clang
FUZZ_BUILD := build-fuzz
FUZZ_OPT   := -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all \
              -Wno-unknown-warning-option -Wno-pass-failed
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN   := $(FUZZ_SRC:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
SECONDS    ?= 60

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_BUILD)/libounce.a $(FUZZ_BUILD)/libounce-cli.a
	@$(if $(V),,echo "  FUZZ    $@")
	$(Q)$(CC) $(CFLAGS) -fsanitize=fuzzer -Itests/fuzz -DOZ_FUZZ_FIXTURES='"$(CURDIR)/tests/fixtures"' -o $@ $< \
		$(FUZZ_BUILD)/libounce-cli.a $(FUZZ_BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

fuzz-build:
	@if why=$$(FUZZ_CC='$(FUZZ_CC)' sh tests/fuzz/run.sh --probe); then \
		$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC='$(FUZZ_CC)' OPT='$(FUZZ_OPT)' \
			LDFLAGS='-fopenmp -fsanitize=address,undefined' fuzz-bins; \
	else echo "  fuzz-build: skipped ($$why)"; fi

.PHONY: fuzz-bins
fuzz-bins: $(FUZZ_BIN)
	@:

fuzz: deps fuzz-build
	@FUZZ_CC='$(FUZZ_CC)' sh tests/fuzz/run.sh $(FUZZ_BUILD) $(SECONDS)

# Runs every target once over the saved reproducers (tests/fuzz/crashes/TARGET/*): each must pass.
fuzz-replay: fuzz-build
	@FUZZ_CC='$(FUZZ_CC)' sh tests/fuzz/run.sh --replay $(FUZZ_BUILD)

CUDA_CHECK_DIR := build-cuda-check
cuda-check:
	@if [ -x "$(NVCC)" ]; then \
		$(MAKE) --no-print-directory $(CUDA_SRC:%.cu=$(CUDA_CHECK_DIR)/%.o) BUILD=$(CUDA_CHECK_DIR) && \
		$(CC) $(CFLAGS) -DOZ_HAVE_CUDA -Itests -fsyntax-only tests/gpu/test_cuda.c && \
		$(CC) $(CFLAGS) -DOZ_HAVE_CUDA -Itests -fsyntax-only tests/gpu/test_bf16.c && \
		$(CC) $(CFLAGS) -DOZ_HAVE_CUDA -I$(CUDA_HOME)/include -Itests -fsyntax-only tests/gpu/test_sdpa.c && \
		$(CC) $(CFLAGS) -DOZ_HAVE_CUDA -I$(CUDA_HOME)/include -fsyntax-only bench/gpu_sdpa.c && \
		echo "  cuda-check: ok"; \
	else echo "  cuda-check: skipped (no nvcc at $(NVCC))"; fi

gpu-test:
	@$(MAKE) --no-print-directory CUDA=1 build-cuda/ounce build-cuda/tests/gpu/test_cuda build-cuda/tests/gpu/test_bf16 \
		build-cuda/tests/gpu/test_sdpa
	@rc=0; for t in test_cuda test_bf16 test_sdpa; do build-cuda/tests/gpu/$$t || rc=1; done; exit $$rc

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

# Installs the Debian packages the build, the tests and the demo need, when any is missing.
deps:
	@sh tools/install-deps.sh

demo: deps
	@$(MAKE) --no-print-directory ounce
	@sh tools/demo.sh

# The include graph's layer order first (a second, no compile needed), then unit tests, end-to-end
# CLI tests, the unit tests again under AddressSanitizer + UBSan, and each fuzz target for 3 seconds.
test: deps
	@sh tools/check_layers.sh
	@$(MAKE) --no-print-directory cuda-check
	@$(MAKE) --no-print-directory ounce $(TEST_BIN) $(BUILD)/tools/logits $(BUILD)/tools/tfdump $(BUILD)/tests/commit_shim.so
	@$(MAKE) --no-print-directory BUILD=build-san OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
		LDFLAGS="-fopenmp -fsanitize=address,undefined" build-san/ounce $(TEST_SRC:tests/%.c=build-san/tests/%)
	@$(MAKE) --no-print-directory fuzz-build
	@FUZZ_CC='$(FUZZ_CC)' sh tests/run.sh $(BUILD) build-san $(FUZZ_BUILD)

unit: ounce $(TEST_BIN)
	@sh tests/run.sh $(BUILD) ""

bench: ounce
	@sh bench/run.sh

clean:
	rm -rf build build-san build-cuda build-cuda-check build-fuzz ounce
