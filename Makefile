# zcow - GNU Make build.  `make` builds build/zcow, build/libzcow.a,
# build/libzcow.so (-> libzcow.so.0 -> libzcow.so.0.MINOR.PATCH) and
# build/zcow.pc; `make tests` the test programs too.  `make check` runs
# every test; `make bench` the benchmark.
# SANITIZE=address,undefined or SANITIZE=thread builds into build-$(SANITIZE).

CC ?= cc
LD ?= ld
OBJCOPY ?= objcopy
NM ?= nm
SANITIZE ?=
VERSION := 0.3.0

# `make install`: PREFIX (/usr/local) and DESTDIR as usual; the
# directories below may be set one by one (LIBDIR=/usr/lib/x86_64-linux-gnu).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL ?= install

# NBD=no builds without libnbd: NBD URIs are then refused ("NBD support
# was not built in") and `zcow --version` says -nbd.  Backups of running
# VMs read them over NBD: they (and their libvirt, libxml2 and jansson)
# go with it.
NBD ?= yes
PKGS := zlib libzstd libisal libcrypto
ifeq ($(NBD),yes)
PKGS += libnbd libxml-2.0 jansson libvirt
else ifneq ($(NBD),no)
$(error NBD=$(NBD): yes or no)
endif

# The shared library: soname libzcow.so.N, file libzcow.so.N.MINOR.PATCH
# (of VERSION).  N is the one a comment of lib/libzcow.map, where the ABI
# is kept, names ("soname libzcow.so.N"), else 0: who breaks the ABI bumps
# it there.
SOMAJOR := $(or $(shell sed -n 's|.*soname:\{0,1\} *libzcow\.so\.\([0-9][0-9]*\).*|\1|p' lib/libzcow.map | head -n 1),0)
SONAME := libzcow.so.$(SOMAJOR)
SOFILE := $(SONAME).$(word 2,$(subst ., ,$(VERSION))).$(word 3,$(subst ., ,$(VERSION)))

ifeq ($(SANITIZE),)
BUILD ?= build
OPT ?= -O2
else
BUILD ?= build-$(subst $(comma),-,$(SANITIZE))
OPT ?= -O1 -g -fno-omit-frame-pointer
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
endif
comma := ,

CFLAGS ?= $(OPT) -g
WARN := -Wall -Wextra -Wvla -Wshadow -Wstrict-prototypes -Wmissing-prototypes
# -MMD -MP: each object depends on the headers its source includes (the .d
# files beside the objects, included at the end).
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -pthread -MMD -MP $(WARN) $(CFLAGS) $(SAN_FLAGS) \
              -Iinclude -Ilib -I$(BUILD) $(shell pkg-config --cflags $(PKGS))
LIBS := $(shell pkg-config --libs $(PKGS)) -pthread
ALL_LDFLAGS := $(LDFLAGS) $(SAN_FLAGS)

# The nbdkit plugin (plugin/zcow.c, nbdkit-plugin-dev): an NBD server of
# libzcow images, built with the NBD side of zcow (not with NBD=no).  It
# holds the library's objects it needs and exports only nbdkit's
# plugin_init.  Installed into nbdkit's plugin directory, rebased from
# nbdkit's prefix onto PREFIX (PLUGINDIR may be set).
ifeq ($(NBD),yes)
PLUGIN := $(BUILD)/nbdkit-zcow-plugin.so
NBDKIT_PREFIX := $(shell pkg-config --variable=prefix nbdkit)
PLUGINDIR ?= $(patsubst $(NBDKIT_PREFIX)/%,$(PREFIX)/%,$(shell pkg-config --variable=plugindir nbdkit))
endif

LIB_SRC := $(sort $(wildcard lib/*.c))
NBD_ONLY := lib/source_nbd.c lib/nbd_client.c lib/dest_nbd.c tests/unit/test_source_nbd.c lib/qmp.c $(wildcard lib/backup*.c) \
            tests/unit/test_backup_dir.c
ifeq ($(NBD),no)
LIB_SRC := $(filter-out $(NBD_ONLY),$(LIB_SRC))
endif
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC := $(sort $(wildcard cli/*.c))
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
ifeq ($(NBD),no)
UNIT_SRC := $(filter-out $(NBD_ONLY),$(UNIT_SRC))
endif
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HELPER_SRC := $(sort $(wildcard tests/helpers/*.c))
HELPER_BIN := $(HELPER_SRC:tests/helpers/%.c=$(BUILD)/tests/%)
# Test builds: the same objects, but fault injection (lib/fault.h) compiled
# in, which the shipped library and zcow do not have.
TEST_LIB_OBJ := $(filter-out $(BUILD)/lib/fault.o,$(LIB_OBJ)) $(BUILD)/lib/fault-inject.o
TEST_LIB := $(BUILD)/tests/libzcow-test.a
FAULT_ZCOW := $(BUILD)/tests/zcow-fault

all: $(BUILD)/zcow $(BUILD)/libzcow.a $(BUILD)/libzcow.so $(BUILD)/zcow.pc $(PLUGIN)

$(BUILD)/%.o: %.c $(BUILD)/%.d | $(BUILD)/config.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -c $< -o $@

# config.h: what the build was configured with (VERSION, NBD), for the
# sources that include it; rewritten only when it changes, so that only
# they are rebuilt (-MMD).
CONFIG_H = printf '/* config.h - made by the Makefile: how zcow was built. */\n\043define ZCOW_VERSION_TEXT "%s"\n\043%s\n' \
	    '$(VERSION)' '$(if $(filter yes,$(NBD)),define ZCOW_HAVE_NBD 1,undef ZCOW_HAVE_NBD /* NBD=no */)' >$@.tmp; \
	if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; fi
$(BUILD)/config.h: FORCE
	@mkdir -p $(dir $@)
	@$(CONFIG_H)
FORCE:

$(BUILD)/lib/fault-inject.o: lib/fault.c $(BUILD)/lib/fault-inject.d
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -DZCOW_FAULT_INJECTION -c $< -o $@

# An object without its .d file (never built with -MMD) is rebuilt.
DEPS := $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(BUILD)/lib/fault-inject.d $(BUILD)/plugin/zcow.d
$(DEPS):

# The static library holds one relocatable object in which only the names
# the .so exports as default versions (NAME@@ZCOW_X.Y) stay global: no
# internal name (source_open, zerr, ...) can collide with a program's in a
# static link, and old versions kept for old programs (NAME@ZCOW_0.1) are
# of no use there.
$(BUILD)/libzcow.a: $(LIB_OBJ) $(BUILD)/$(SOFILE) Makefile
	$(LD) -r -o $(BUILD)/libzcow.o $(LIB_OBJ)
	$(NM) -D --defined-only -P $(BUILD)/$(SOFILE) | sed -n 's/@@.*//p' > $(BUILD)/libzcow.globals
	$(OBJCOPY) --keep-global-symbols=$(BUILD)/libzcow.globals $(BUILD)/libzcow.o
	rm -f $@ && ar rcs $@ $(BUILD)/libzcow.o

# libzcow.so -> libzcow.so.N -> libzcow.so.N.MINOR.PATCH, the file.
$(BUILD)/$(SOFILE): $(LIB_OBJ) lib/libzcow.map Makefile
	$(CC) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/libzcow.map \
	    $(ALL_LDFLAGS) -o $@ $(LIB_OBJ) $(LIBS)

$(BUILD)/$(SONAME): $(BUILD)/$(SOFILE)
	ln -sfn $(SOFILE) $@

$(BUILD)/libzcow.so: $(BUILD)/$(SONAME)
	ln -sfn $(SONAME) $@

$(BUILD)/zcow: $(CLI_OBJ) $(BUILD)/libzcow.a
	$(CC) $(ALL_LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libzcow.a $(LIBS)

$(BUILD)/plugin/zcow.o: plugin/zcow.c $(BUILD)/plugin/zcow.d | $(BUILD)/config.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(shell pkg-config --cflags nbdkit) -fvisibility=hidden -c $< -o $@

# Linked from an archive of the library's objects (not libzcow.a's one
# object), so that only those the writer needs come in, and with them only
# zlib, libzstd and ISA-L, not libvirt and what it loads.
$(BUILD)/plugin/libzcow-objs.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/nbdkit-zcow-plugin.so: $(BUILD)/plugin/zcow.o $(BUILD)/plugin/libzcow-objs.a
	$(CC) -shared $(ALL_LDFLAGS) -Wl,--as-needed -Wl,--exclude-libs,ALL -o $@ $^ $(LIBS)

# zcow.pc for the directories `make install` uses (PREFIX, LIBDIR, ...);
# rewritten when they change.  Directories under PREFIX are written
# relative to ${prefix}, as pkg-config's users expect.
pcdir = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))
$(BUILD)/zcow.pc: FORCE
	@mkdir -p $(BUILD)
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(call pcdir,$(LIBDIR))' \
	    'includedir=$(call pcdir,$(INCLUDEDIR))' '' 'Name: zcow' \
	    'Description: write compressed qcow2 images fast, through O_DIRECT' \
	    'Version: $(VERSION)' 'Requires.private: $(PKGS)' 'Libs: -L$${libdir} -lzcow' \
	    'Libs.private: -pthread' 'Cflags: -I$${includedir}' >$@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv -f $@.tmp $@; fi

# The test library: every object, internal symbols global (the unit tests
# reach internal modules), fault injection in.
$(TEST_LIB): $(TEST_LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# zcow with fault injection, for the tests that inject faults.
$(FAULT_ZCOW): $(CLI_OBJ) $(TEST_LIB)
	$(CC) $(ALL_LDFLAGS) -o $@ $(CLI_OBJ) $(TEST_LIB) $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(TEST_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(TEST_LIB) $(LIBS)

$(BUILD)/tests/%: tests/helpers/%.c $(TEST_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $< $(TEST_LIB) $(LIBS)

tests: all $(UNIT_BIN) $(HELPER_BIN) $(FAULT_ZCOW)

# The binary, the header, the libraries (the .so with its soname links),
# zcow.pc and the man pages, under $(DESTDIR).  Run ldconfig after
# installing into a system directory.
MAN_PAGES := $(sort $(wildcard man/*.[1-8]))
MAN_DIRS := $(addprefix $(DESTDIR)$(MANDIR)/man,$(sort $(subst .,,$(suffix $(MAN_PAGES)))))
install: all
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(MAN_DIRS)
	$(INSTALL) -m 755 $(BUILD)/zcow $(DESTDIR)$(BINDIR)/zcow
	$(INSTALL) -m 644 include/zcow.h $(DESTDIR)$(INCLUDEDIR)/zcow.h
	$(INSTALL) -m 755 $(BUILD)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SOFILE)
	ln -sfn $(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/libzcow.so
	$(INSTALL) -m 644 $(BUILD)/libzcow.a $(DESTDIR)$(LIBDIR)/libzcow.a
	$(INSTALL) -m 644 $(BUILD)/zcow.pc $(DESTDIR)$(PKGCONFIGDIR)/zcow.pc
	for m in $(MAN_PAGES); do \
	    $(INSTALL) -m 644 $$m $(DESTDIR)$(MANDIR)/man$${m##*.}/$${m#man/} || exit 1; \
	done
ifneq ($(PLUGIN),)
	$(INSTALL) -d $(DESTDIR)$(PLUGINDIR)
	$(INSTALL) -m 755 $(PLUGIN) $(DESTDIR)$(PLUGINDIR)/nbdkit-zcow-plugin.so
endif

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/zcow $(DESTDIR)$(INCLUDEDIR)/zcow.h \
	    $(DESTDIR)$(LIBDIR)/$(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libzcow.so \
	    $(DESTDIR)$(LIBDIR)/libzcow.a $(DESTDIR)$(PKGCONFIGDIR)/zcow.pc \
	    $(foreach m,$(MAN_PAGES),$(DESTDIR)$(MANDIR)/man$(subst .,,$(suffix $(m)))/$(notdir $(m))) \
	    $(if $(PLUGIN),$(DESTDIR)$(PLUGINDIR)/nbdkit-zcow-plugin.so)

# The whole suite: normal build, then ASan+UBSan and TSan builds.
check:
	tests/run.sh

demo: all
	scripts/demo.sh

bench: all
	bench/run.sh

clean:
	rm -rf build build-*

.PHONY: all tests install uninstall check demo bench clean FORCE

# Fuzzing (libFuzzer, tests/fuzz/): the library is rebuilt with clang,
# coverage and ASan+UBSan into build-fuzz/ and linked into each target.
# `make fuzz` runs every target FUZZ_TIME seconds (60), `make fuzz-quick`
# 5 s each (for tests/run.sh); both fail on a crash.
FUZZ_CC ?= clang
FUZZ_BUILD := build-fuzz
FUZZ_TIME ?= 60
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -pthread -MMD -MP -g -O1 -fno-omit-frame-pointer $(WARN) \
               -fsanitize=address,undefined -fno-sanitize-recover=all \
               -Iinclude -Ilib -I$(FUZZ_BUILD) $(shell pkg-config --cflags $(PKGS))
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(FUZZ_BUILD)/%.o)

$(FUZZ_BUILD)/lib/%.o: lib/%.c $(FUZZ_BUILD)/lib/%.d | $(FUZZ_BUILD)/config.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJ) $(LIBS)

fuzz-build: $(FUZZ_BIN)

.SECONDARY: $(FUZZ_LIB_OBJ)
$(FUZZ_BUILD)/config.h: FORCE
	@mkdir -p $(dir $@)
	@$(CONFIG_H)
$(FUZZ_LIB_OBJ:.o=.d):

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_TIME)

fuzz-quick: fuzz-build
	tests/fuzz/run.sh 5

.PHONY: fuzz-build fuzz fuzz-quick

# The header dependencies -MMD wrote (none before the first build).
include $(wildcard $(DEPS) $(UNIT_BIN:=.d) $(HELPER_BIN:=.d) $(FUZZ_LIB_OBJ:.o=.d) $(FUZZ_BIN:=.d))
