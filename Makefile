# geosteer build. GNU make; `make help` lists the targets.
#
# Everything is built under build/: the engine library (build/libgeosteer.a,
# optimised), the tools, and a second copy of the engine compiled with
# AddressSanitizer and UndefinedBehaviorSanitizer for the tests. Every
# target first runs scripts/install-deps, which installs missing Debian
# packages and is a quick no-op otherwise.

CC ?= cc
BUILD := build
PKGS := libuv libmaxminddb msgpack sqlite3 yaml-0.1
# Deferred (=) so pkg-config runs after install-deps has run.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS = $(shell pkg-config --libs $(PKGS)) -lm
TEST_LIBS = $(shell pkg-config --libs criterion)

WARN := -Wall -Wextra -Werror -Wstrict-prototypes -Wshadow -Wformat=2 \
        -Wno-missing-field-initializers
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude -Iserver -g
OPT_CFLAGS := -O2
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
             -fno-omit-frame-pointer
CFLAGS ?=

ENGINE_SRC := server/addr.c server/diag.c server/errors.c server/yamldoc.c \
              server/dcmap.c server/geo.c server/rank.c server/table.c
CLI_SRC := client/geosteer.c
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_LOOKUP_SRC := bench/bench_lookup.c

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/opt/%.o)
ENGINE_SAN_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/san/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/san/%.o)

GEODB := data/GeoLite2-City.mmdb
FIXTURE_DB := tests/fixtures/city-test.mmdb

.PHONY: all deps test bench-lookup format format-check clean help fixtures \
        check-clang geodb
.DEFAULT_GOAL := all

all: $(BUILD)/geosteer $(BUILD)/libgeosteer.a

help:
	@echo "make            build the library and tools into build/"
	@echo "make test       build with ASan/UBSan and run every test"
	@echo "make bench-lookup  route-table lookup benchmark (real database)"
	@echo "make deps       install missing Debian packages"
	@echo "make geodb      fetch data/GeoLite2-City.mmdb"
	@echo "make fixtures   regenerate tests/fixtures/city-test.mmdb"
	@echo "make format-check  check formatting with clang-format"
	@echo "make check-clang   build everything with clang as well"

deps:
	@scripts/install-deps

geodb: $(GEODB)

$(GEODB): | deps
	scripts/fetch-geodb

# Objects wait for deps (order-only) but are not rebuilt because of it.
$(BUILD)/opt/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(OPT_CFLAGS) $(PKG_CFLAGS) $(CFLAGS) -MMD -MP \
	  -c $< -o $@

$(BUILD)/san/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 $(SAN_FLAGS) $(PKG_CFLAGS) $(CFLAGS) -MMD -MP \
	  -c $< -o $@

$(BUILD)/libgeosteer.a: $(ENGINE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/geosteer: $(BUILD)/opt/client/geosteer.o $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/bench-lookup: $(BUILD)/opt/bench/bench_lookup.o $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/run-tests: $(TEST_OBJ) $(ENGINE_SAN_OBJ)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS) $(TEST_LIBS)

test: $(BUILD)/run-tests $(BUILD)/geosteer $(GEODB)
	GS_SOURCE_DIR=$(CURDIR) GS_CLI=$(CURDIR)/$(BUILD)/geosteer $(BUILD)/run-tests

bench-lookup: $(BUILD)/bench-lookup $(GEODB)
	$(BUILD)/bench-lookup --db $(GEODB) --map examples/dcmap.yaml

fixtures: | deps
	perl tests/fixtures/gen-city-mmdb.pl $(FIXTURE_DB)

FORMAT_FILES = $(shell git ls-files '*.c' '*.h')

format:
	clang-format -i $(FORMAT_FILES)

format-check: | deps
	clang-format --dry-run --Werror $(FORMAT_FILES)

# Both compilers must build clean; CI runs this.
check-clang: | deps
	$(MAKE) BUILD=$(BUILD)/clang CC=clang all $(BUILD)/clang/bench-lookup \
	  $(BUILD)/clang/run-tests

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
