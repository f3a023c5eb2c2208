# ckpt - one plain, non-recursive Makefile.
#
#   make            build build/ckpt (and build/libckpt.a)
#   make test       install what is missing (apt packages, a pinned Python venv),
#                   build, run the whole suite (unit tests, CLI tests, interop tests)
#   make asan       the same suite against an ASan+UBSan build in build-asan/
#   make demo       build and run the main jobs on the bundled tiny gpt-oss
#   make bench      benchmarks (bench/, minutes, several GB of disk)
#   make V=1        show the compiler command lines
#
# Floating point: -ffp-contract=off and never -ffast-math.  Our quantizers
# must give the same bytes as the reference libraries on every compiler and
# device; a fused multiply-add changes the last bit of a product-sum.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O2
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -g $(OPT) -ffp-contract=off -fno-fast-math -pthread \
	-Wall -Wextra -Werror -Wvla -Wstrict-prototypes -Wmissing-prototypes -Wshadow \
	-Wwrite-strings -Wformat=2 -Wno-format-nonliteral -MMD -MP
CFLAGS_ALL = $(CFLAGS_BASE) $(SAN) $(CFLAGS)
LDLIBS_ALL = -lcjson -lzstd -lcrypto -lm -pthread $(LDLIBS)
PYTHON ?= python3

ifeq ($(V),1)
Q =
else
Q = @
endif

LIB_SRCS := $(sort $(wildcard libtensor/*.c quant/*.c merge/*.c verify/*.c))
CMD_SRCS := $(sort $(wildcard cmd/*.c))
UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))

LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
CMD_OBJS := $(CMD_SRCS:%.c=$(BUILD)/obj/%.o)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

all: $(BUILD)/ckpt $(UNIT_BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "   CC $@")
	$(Q)$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILD)/libckpt.a: $(LIB_OBJS)
	@$(if $(Q),echo "   AR $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/ckpt: $(CMD_OBJS) $(BUILD)/libckpt.a
	@$(if $(Q),echo "   LD $@")
	$(Q)$(CC) $(CFLAGS_ALL) -o $@ $(CMD_OBJS) $(BUILD)/libckpt.a $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libckpt.a tests/unit/tap.h
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "   CC $@")
	$(Q)$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libckpt.a $(LDLIBS_ALL)

# --- dependencies and the test venv -------------------------------------------------
VENV := build/venv
STAMP_DEPS := build/.deps-ok
STAMP_VENV := $(VENV)/.ok

$(STAMP_DEPS): scripts/ensure-deps.sh
	$(Q)sh scripts/ensure-deps.sh
	@mkdir -p build && touch $@

$(STAMP_VENV): tests/requirements.txt scripts/ensure-venv.sh
	$(Q)sh scripts/ensure-venv.sh $(VENV) tests/requirements.txt
	@touch $@

deps: $(STAMP_DEPS)
venv: $(STAMP_VENV)

# The suite is driven by pytest: it runs the C unit binaries, the CLI tests and
# the interop tests with real clients, and prints the closing line CI reads.
test: $(STAMP_DEPS)
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory venv
	CKPT_BUILD=$(abspath $(BUILD)) $(VENV)/bin/python -m pytest -q -ra tests $(PYTEST_ARGS)

asan: $(STAMP_DEPS)
	$(Q)$(MAKE) --no-print-directory all BUILD=build-asan OPT=-O1 \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
	$(Q)$(MAKE) --no-print-directory venv
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=99 \
	CKPT_BUILD=$(abspath build-asan) CKPT_SANITIZED=1 $(VENV)/bin/python -m pytest -q -ra tests $(PYTEST_ARGS)

demo: $(STAMP_DEPS)
	$(Q)$(MAKE) --no-print-directory all
	$(Q)sh scripts/demo.sh $(BUILD)/ckpt

bench: $(STAMP_DEPS)
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory venv
	$(Q)sh bench/run.sh $(BUILD)/ckpt

fuzz:
	$(Q)$(MAKE) --no-print-directory all BUILD=build-fuzz CC=clang OPT=-O1 \
		SAN="-fsanitize=fuzzer-no-link,address,undefined"
	$(Q)for f in $(FUZZ_SRCS); do n=$$(basename $$f .c); \
		clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -o build-fuzz/$$n $$f \
		build-fuzz/libckpt.a $(LDLIBS_ALL) || exit 1; done
	@echo "run e.g.: mkdir -p build-fuzz/corpus && build-fuzz/fuzz_safetensors -max_total_time=60 build-fuzz/corpus tests/bad"

PREFIX ?= /usr/local
install: $(BUILD)/ckpt
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BUILD)/ckpt $(DESTDIR)$(PREFIX)/bin/ckpt
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 cmd/ckpt.1 $(DESTDIR)$(PREFIX)/share/man/man1/ckpt.1

clean:
	rm -rf build-asan build-fuzz $(BUILD)/obj $(BUILD)/tests $(BUILD)/ckpt $(BUILD)/libckpt.a

.PHONY: all test asan demo bench fuzz install clean deps venv

-include $(LIB_OBJS:.o=.d) $(CMD_OBJS:.o=.d)
