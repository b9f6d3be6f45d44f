# redis-server for the Redis broadcast backend's tests (tests/redis_*.rs,
# and the cluster, continuity and presence tests run against both backends)
# and `make bench-redis`: Debian's packages (redis-tools holds the binary;
# libjemalloc2 and liblzf1 its libraries), unpacked under target/ with no
# system install, and started through a wrapper that finds the libraries
# (redis-server is redis-check-rdb under another name, as the package links it).
#
# Included by the main Makefile.

REDIS_DIR    := target/tools/redis
REDIS_SERVER := $(REDIS_DIR)/redis-server
REDIS_DEBS   := redis-tools libjemalloc2 liblzf1

.PHONY: redis-server
redis-server: $(REDIS_SERVER) ## Fetch redis-server into target/tools (Debian's packages)

$(REDIS_SERVER):
	rm -rf $(REDIS_DIR) && mkdir -p $(REDIS_DIR)/root
	cd $(REDIS_DIR) && { apt-get download $(REDIS_DEBS) 2>/dev/null || \
		{ apt-get update -qq && apt-get download $(REDIS_DEBS); }; } && \
		for deb in *.deb; do dpkg -x "$$deb" root; done && rm -f *.deb && \
		ln -sf redis-check-rdb root/usr/bin/redis-server
	printf '%s\n' '#!/bin/sh' \
		'here=$$(cd "$$(dirname "$$0")" && pwd)' \
		'LD_LIBRARY_PATH="$$here/root/usr/lib/x86_64-linux-gnu$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/root/usr/bin/redis-server" "$$@"' \
		> $@
	chmod +x $@
	$@ --version
