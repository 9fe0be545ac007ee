#!/usr/bin/env bash
# Debian packages the test suite runs for real: prometheus (server + promtool),
# prometheus-pushgateway, and chromium (browser test of the sweep report). Idempotent; `make test`
# runs it. Installs with apt (as root, or through sudo). Where that is not possible, it fails
# naming what is missing, unless SSAGAN_TEST_ALLOW_MISSING=1: then it only says so, and the tests
# that need a missing part are skipped and listed with their reason at the end of the run.
set -euo pipefail
need=()
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  echo "[setup-system] prometheus, pushgateway and chromium present"
  exit 0
fi
cannot() {
  if [ "${SSAGAN_TEST_ALLOW_MISSING:-}" = 1 ]; then
    echo "[setup-system] missing ${need[*]} ($1); SSAGAN_TEST_ALLOW_MISSING=1: the tests that need them are skipped, listed at the end" >&2
    exit 0
  fi
  echo "[setup-system] missing ${need[*]} ($1): install them, or SSAGAN_TEST_ALLOW_MISSING=1 to skip their tests (listed)" >&2
  exit 1
}
command -v apt-get >/dev/null || cannot "no apt-get here: use your package manager"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null || cannot "not root and no password-less sudo"
  sudo="sudo"
fi
echo "[setup-system] installing ${need[*]} (apt)"
$sudo apt-get update -qq
# Debian's prometheus package would start a system service; tests start their own servers.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
