#!/usr/bin/env bash
# Debian packages the test suite runs for real: prometheus (server + promtool),
# prometheus-pushgateway, and chromium (browser test of the sweep report). Idempotent.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  echo "[setup-system] prometheus, pushgateway and chromium present"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "[setup-system] missing ${need[*]}: install them with your package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "[setup-system] installing ${need[*]} (apt)"
$sudo apt-get update -qq
# Debian's prometheus package would start a system service; tests start their own servers.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
