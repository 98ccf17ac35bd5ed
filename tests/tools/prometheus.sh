#!/usr/bin/env bash
# Provide `promtool` and `prometheus` (the tests check the live /metrics, the alert rules and every
# dashboard query with them) in DEST/bin, without root:
#   1. copies already on PATH, when both are at least MIN_VERSION;
#   2. otherwise Debian's (or Ubuntu's) `prometheus` package, fetched with `apt-get download` against a
#      package list of our own (no root, nothing installed system-wide) and unpacked with `dpkg-deb -x`.
# Where neither works, one line says what to install. Usage: tests/tools/prometheus.sh DEST
set -euo pipefail

MIN_VERSION=2.42  # promtool's `test rules` and `check metrics` as the tests use them; Debian 12 ships 2.42
dest=${1:?usage: $0 DEST}
bin="$dest/bin"

version_of() {  # "2.42.0" from "promtool, version 2.42.0+ds (branch: ...)"; empty when it does not run
  "$1" --version 2>&1 | sed -n 's/^[a-z]*, version \([0-9][0-9.]*\).*/\1/p' | head -1
}

new_enough() {  # version_of(tool) >= MIN_VERSION
  local found
  found=$(version_of "$1")
  [ -n "$found" ] && [ "$(printf '%s\n%s\n' "$MIN_VERSION" "$found" | sort -V | head -1)" = "$MIN_VERSION" ]
}

have() { [ -x "$bin/promtool" ] && [ -x "$bin/prometheus" ] && new_enough "$bin/promtool" && new_enough "$bin/prometheus"; }

fail() {
  echo "error: the tests need promtool and prometheus >= $MIN_VERSION ($1): install Debian's or Ubuntu's" \
       "'prometheus' package, or put both on PATH, then run make test again" >&2
  exit 1
}

have && exit 0
mkdir -p "$bin"

on_path_promtool=$(command -v promtool || true)
on_path_prometheus=$(command -v prometheus || true)
if [ -n "$on_path_promtool" ] && [ -n "$on_path_prometheus" ] \
   && new_enough "$on_path_promtool" && new_enough "$on_path_prometheus"; then
  ln -sf "$on_path_promtool" "$bin/promtool"
  ln -sf "$on_path_prometheus" "$bin/prometheus"
  have && exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "no copy on PATH and no apt-get here"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
# A package list of our own: `apt-get update` as an ordinary user, into folders it may write.
apt=(apt-get -qq -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1)
echo "fetching Debian's prometheus package for promtool and prometheus (once, into $dest)" >&2
"${apt[@]}" update >/dev/null 2>&1 || fail "apt-get update failed"
(cd "$work" && "${apt[@]}" download prometheus >/dev/null 2>&1) || fail "apt-get download prometheus failed"
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus" "$bin/"
have || fail "the packaged version is $(version_of "$bin/promtool")"
echo "promtool and prometheus $(version_of "$bin/promtool") in $bin" >&2
