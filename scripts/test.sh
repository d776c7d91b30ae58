#!/usr/bin/env bash
# The README's test command: installs the system programs the tests talk to
# where they are missing (Debian packages, as root), then runs `cargo test`
# with any arguments given. .ci/run calls this same script.
#
#   javac         the tutorial's Java client and server (interop tests)
#   prlimit       the out-of-descriptors tests lower the server's limit
#   python3       a --exec test runs a Python script as the helper
#   redis-server  the chat cluster tests run a real Redis
#   haproxy       the PROXY protocol tests run a real HAProxy (in /usr/sbin)
#   chromium      the web page tests drive a real headless Chromium,
#   chromedriver  through its WebDriver server (package chromium-driver)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v javac >/dev/null || need+=(default-jdk-headless)
command -v prlimit >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v redis-server >/dev/null || need+=(redis-server)
PATH="$PATH:/usr/sbin" command -v haproxy >/dev/null || need+=(haproxy)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "the tests need: ${need[*]}; as root: apt-get update && apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
exec cargo test "$@"
