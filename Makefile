# geosteer build. GNU make; `make help` lists the targets.
#
# Everything is built under build/: the engine library (build/libgeosteer.a,
# optimised), the tools, and a second copy of the engine compiled with
# AddressSanitizer and UndefinedBehaviorSanitizer for the tests. Every
# target first runs scripts/install-deps, which installs missing Debian
# packages and is a quick no-op otherwise.

CC ?= cc
BUILD := build
PKGS := libuv libmaxminddb msgpack sqlite3 yaml-0.1 libsodium
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
# A bound on the whole test run instead of per-test timeouts (Criterion's
# runner leaks a little for every test that has one, which LeakSanitizer
# would report). Every wait inside the tests is itself a bounded poll.
TEST_TIMEOUT ?= 1500

ENGINE_SRC := server/addr.c server/diag.c server/errors.c server/yamldoc.c \
              server/dcmap.c server/geo.c server/rank.c server/table.c \
              server/config.c server/scan.c server/text.c
# The daemon's modules; geosteerd.c holds main() and stays out of the lib.
SERVER_SRC := server/log.c server/rpc.c server/conn.c server/store.c \
              server/reload.c server/route.c server/admin.c server/stats.c \
              server/optout.c server/privacy.c server/share.c
CLI_SRC := client/geosteer.c
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_LOOKUP_SRC := bench/bench_lookup.c

ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/opt/%.o)
ENGINE_SAN_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/san/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/opt/%.o)
SERVER_SAN_OBJ := $(SERVER_SRC:%.c=$(BUILD)/san/%.o)
CLIENT_SRC := client/gsclient.c
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/san/%.o)

GEODB := data/GeoLite2-City.mmdb
FIXTURE_DB := tests/fixtures/city-test.mmdb

.PHONY: all deps test run bench-lookup format format-check clean help fixtures \
        check-clang geodb
.DEFAULT_GOAL := all

all: $(BUILD)/geosteer $(BUILD)/geosteerd $(BUILD)/libgeosteer.a

help:
	@echo "make            build the library and tools into build/"
	@echo "make test       build with ASan/UBSan and run every test"
	@echo "make run        build, fetch the database, start geosteerd"
	@echo "make bench-lookup  route-table lookup benchmark (real database)"
	@echo "make bench-load    geosteerd against redis-server under load"
	@echo "make bench-optout  cost of 1,000,000 opt-outs"
	@echo "make bench-share   cost of the provider share"
	@echo "make crash-test    SIGKILL during opt-out writes, nothing lost"
	@echo "make fuzz       libFuzzer on the scanner and decoder (FUZZ_SECONDS)"
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

$(BUILD)/geosteerd: $(BUILD)/opt/server/geosteerd.o $(SERVER_OBJ) \
                   $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/geosteer: $(BUILD)/opt/client/geosteer.o $(BUILD)/opt/client/gsclient.o \
                  $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/bench-lookup: $(BUILD)/opt/bench/bench_lookup.o $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

# The tests drive a sanitized geosteerd, so a leak or overflow in the
# daemon fails them too (LeakSanitizer turns a leak into exit status 1).
$(BUILD)/geosteerd-san: $(BUILD)/san/server/geosteerd.o $(SERVER_SAN_OBJ) \
                       $(ENGINE_SAN_OBJ)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS)

LOADGEN_PARSE_SAN_OBJ := $(BUILD)/san/bench/loadgen_rpc.o \
                         $(BUILD)/san/bench/loadgen_resp.o
$(BUILD)/run-tests: $(TEST_OBJ) $(SERVER_SAN_OBJ) $(ENGINE_SAN_OBJ) \
                    $(CLIENT_SRC:%.c=$(BUILD)/san/%.o) $(LOADGEN_PARSE_SAN_OBJ)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(PKG_LIBS) $(TEST_LIBS)

test: $(BUILD)/run-tests $(BUILD)/geosteer $(BUILD)/geosteerd-san $(GEODB) \
      $(BUILD)/optout-crash
	GS_SOURCE_DIR=$(CURDIR) GS_CLI=$(CURDIR)/$(BUILD)/geosteer \
	  GS_DAEMON=$(CURDIR)/$(BUILD)/geosteerd-san \
	  GS_CRASH=$(CURDIR)/$(BUILD)/optout-crash \
	  timeout $(TEST_TIMEOUT) $(BUILD)/run-tests

# Starts the server on the example configuration, in the foreground.
run: $(BUILD)/geosteerd $(BUILD)/geosteer $(GEODB)
	@mkdir -p var
	@echo "geosteerd: route 127.0.0.1:7400 and [::1]:7400, admin var/admin.sock,"
	@echo "           metrics http://127.0.0.1:9400/metrics; Ctrl-C stops it."
	@echo "try, from another terminal: build/geosteer route --ip 81.2.69.142"
	exec $(BUILD)/geosteerd -c examples/geosteer.yaml

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

# --- fuzzing (scan) --------------------------------------------------------
# make fuzz [FUZZ_SECONDS=60]: libFuzzer on the MessagePack scanner and the
# request decoder behind it, with
# clang. It runs on $(BUILD)/fuzz-corpus, seeded from the committed
# fuzz/corpus/scan (which it never writes) and kept between runs; a crash
# leaves its input in $(BUILD)/crash-*. fuzz/make-corpus.sh remakes the seeds.
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=all -std=c11 $(WARN) -Iinclude -Iserver

.PHONY: fuzz

FUZZ_SRC := fuzz/fuzz_scan.c server/scan.c server/rpc.c server/errors.c \
            server/text.c

$(BUILD)/fuzz-scan: $(FUZZ_SRC) server/scan.h server/rpc.h tests/msgpack_same.h | deps
	@mkdir -p $(BUILD)
	clang $(FUZZ_CFLAGS) -D_GNU_SOURCE $(PKG_CFLAGS) -o $@ $(FUZZ_SRC) \
	  -lmsgpackc -luv

fuzz: $(BUILD)/fuzz-scan
	@mkdir -p $(BUILD)/fuzz-corpus
	cp fuzz/corpus/scan/* $(BUILD)/fuzz-corpus/
	$(BUILD)/fuzz-scan -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	  -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus
# --- end fuzzing -----------------------------------------------------------

# --- load benchmark (bench-load) -------------------------------------------
# make bench-load [BENCH_N=requests] [BENCH_PAIRS=7]: geosteerd's route
# listener and Redis under the same closed-loop load from $(BUILD)/loadgen;
# bench/bench-load.sh starts both servers on free loopback ports and prints
# `name: value unit` lines (docs/benchmarks.md). loadgen needs only libc;
# its load engine (bench/loadgen_core.c, bench/loadgen_rpc.c) also drives
# bench-optout's route. The tests check both replies' parsers (loadgen_rpc,
# loadgen_resp) against msgpack-c and by hand.
.PHONY: bench-load

LOADGEN_CORE_OBJ := $(BUILD)/opt/bench/loadgen_core.o \
                    $(BUILD)/opt/bench/loadgen_rpc.o

$(BUILD)/loadgen: $(BUILD)/opt/bench/loadgen.o $(BUILD)/opt/bench/loadgen_resp.o \
                 $(LOADGEN_CORE_OBJ)
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^

bench-load: $(BUILD)/loadgen $(BUILD)/geosteerd $(GEODB)
	LOADGEN=$(CURDIR)/$(BUILD)/loadgen GEOSTEERD=$(CURDIR)/$(BUILD)/geosteerd \
	  bench/bench-load.sh
# --- end load benchmark ----------------------------------------------------

# --- opt-out benchmark (bench-optout) --------------------------------------
# make bench-optout [BENCH_N=requests] [BENCH_PAIRS=7] [BENCH_SETS=2000]:
# what opt-outs cost. bench/bench-optout.sh builds a store of 1,000,000
# opt-outs, starts two geosteerd (no opt-outs; the 1,000,000) on loopback
# from a temporary folder, and prints `name: value unit` lines: index load
# time and size, route throughput with and without them (requests carry a
# user), and durable optout.set calls (docs/benchmarks.md).
.PHONY: bench-optout

$(BUILD)/bench-optout: $(BUILD)/opt/bench/bench_optout.o $(LOADGEN_CORE_OBJ) \
                      $(BUILD)/opt/server/store.o $(BUILD)/opt/server/optout.o \
                      $(BUILD)/opt/client/gsclient.o $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

bench-optout: $(BUILD)/bench-optout $(BUILD)/geosteerd $(GEODB)
	BENCH_OPTOUT=$(abspath $(BUILD)/bench-optout) \
	  GEOSTEERD=$(abspath $(BUILD)/geosteerd) bench/bench-optout.sh
# --- end opt-out benchmark -------------------------------------------------

# --- provider-share benchmark (bench-share) --------------------------------
# make bench-share [BENCH_ROUNDS=9] [BENCH_N=requests]: route throughput
# and CPU per request of the optimised geosteerd with the provider share
# off, on in events mode to a local sink that reads and discards
# ($(BUILD)/share-sink), on with the provider's port closed, and in events
# mode with interval_ms 10 (every record shared); bench/bench-share.sh
# alternates them over the rounds and prints `name: value unit` lines
# (docs/benchmarks.md). Uses the loadgen that bench-load builds.
.PHONY: bench-share

$(BUILD)/share-sink: $(BUILD)/opt/bench/share_sink.o
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^

bench-share: $(BUILD)/geosteerd $(BUILD)/geosteer $(BUILD)/loadgen \
             $(BUILD)/share-sink $(GEODB)
	GEOSTEERD=$(CURDIR)/$(BUILD)/geosteerd GEOSTEER=$(CURDIR)/$(BUILD)/geosteer \
	  LOADGEN=$(CURDIR)/$(BUILD)/loadgen \
	  SHARE_SINK=$(CURDIR)/$(BUILD)/share-sink bench/bench-share.sh
# --- end provider-share benchmark ------------------------------------------

# --- opt-out crash test (crash-test) ---------------------------------------
# make crash-test: tests/crash/optout_crash.c kills the optimised geosteerd
# with SIGKILL at pseudo-random moments (fixed seed) while it acknowledges
# optout.set calls, restarts it, and checks that no acknowledged opt-out was
# lost and that the store passes PRAGMA integrity_check. make test runs a
# short version of it (tests/test_privacy.c, through GS_CRASH).
.PHONY: crash-test

$(BUILD)/optout-crash: $(BUILD)/opt/tests/crash/optout_crash.o \
                      $(BUILD)/opt/client/gsclient.o $(BUILD)/libgeosteer.a
	$(CC) $(OPT_CFLAGS) $(CFLAGS) -o $@ $^ $(PKG_LIBS)

crash-test: $(BUILD)/optout-crash $(BUILD)/geosteerd
	$(BUILD)/optout-crash --acks 2000 --kills 20 --daemon $(BUILD)/geosteerd \
	  --db $(FIXTURE_DB) --map tests/fixtures/maps/test-map.yaml
# --- end opt-out crash test ------------------------------------------------
