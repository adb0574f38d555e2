# ounce build. `make` builds ./ounce; `make demo` trains the demo model and samples; `make test` runs
# the CPU suite (unit tests, CLI end-to-end tests, then the unit tests again under ASan/UBSan).
# `make CUDA=1` adds the CUDA backend (sm_90).

CC      ?= gcc
OPT     ?= -O3 -march=native
# OpenBLAS's OpenMP build: our OpenMP loops and its GEMMs then share one thread pool. With the
# pthread build (Debian's default alternative) the two pools spin against each other on small
# cores counts, measured 14x slower on the tiny preset with 2 cores.
OPENBLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
CFLAGS  += -std=c11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -fopenmp $(OPT) -g -Isrc \
           -I/usr/include/x86_64-linux-gnu/openblas-openmp -I/usr/include/cjson
LDLIBS  += -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -lcjson -lpcre2-8 -lm
LDFLAGS += -fopenmp

BUILD   ?= build
LIB_SRC := $(sort $(filter-out src/main.c src/cli/%,$(wildcard src/*.c src/*/*.c src/*/*/*.c)))
CLI_SRC := src/main.c $(sort $(wildcard src/cli/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all deps demo test unit e2e sanitize bench clean
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

# V=1 shows the full commands.
Q := $(if $(V),,@)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libounce.a tests/harness.h
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -Itests -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

# Development helpers (tools/*.c), e.g. build/tools/logits for tools/check_transformers.py.
$(BUILD)/tools/%: tools/%.c $(BUILD)/libounce.a
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(BUILD)/libounce.a
	@mkdir -p $(dir $@)
	@$(if $(V),,echo "  CC      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libounce.a $(LDFLAGS) $(LDLIBS)

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

# Installs the Debian packages the build, the tests and the demo need, when any is missing.
deps:
	@sh tools/install-deps.sh

demo: deps
	@$(MAKE) --no-print-directory ounce
	@sh tools/demo.sh

# Unit tests, end-to-end CLI tests, then the unit tests again under AddressSanitizer + UBSan.
test: deps
	@$(MAKE) --no-print-directory ounce $(TEST_BIN) $(BUILD)/tools/logits
	@$(MAKE) --no-print-directory BUILD=build-san OPT="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
		LDFLAGS="-fopenmp -fsanitize=address,undefined" build-san/ounce $(TEST_SRC:tests/%.c=build-san/tests/%)
	@sh tests/run.sh $(BUILD) build-san

unit: ounce $(TEST_BIN)
	@sh tests/run.sh $(BUILD) ""

bench: ounce
	@sh bench/run.sh

clean:
	rm -rf build build-san ounce
