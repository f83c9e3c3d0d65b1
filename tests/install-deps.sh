#!/usr/bin/env bash
# Installs the real parts the suite runs against (../shared/TESTING.md), when missing.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx dd || need+=(busybox-static)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
command -v prometheus-process-exporter >/dev/null || need+=(prometheus-process-exporter)
command -v node >/dev/null || need+=(nodejs)
# systemd-analyze verifies the units of `aitools-exporter service install` (no systemd runs).
command -v systemd-analyze >/dev/null || need+=(systemd)
# The browser that renders the landing page (tests/test_landing_page.py).
command -v chromium >/dev/null || need+=(chromium)
# Netdata's apps.plugin, the peer of the apps breakdown (tests/parts/apps_plugin.py).
[ -x /usr/lib/netdata/plugins.d/apps.plugin ] || need+=(netdata-core)
# The Docker socket proxy of compose.monitoring.yml (compose/docker-proxy/nginx.conf).
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx-light)
# A new user's install (README, quick start): pipx with Debian's own Python (tests/test_install.py).
command -v pipx >/dev/null || need+=(pipx)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# llama.cpp's llama-server, built once per machine (tests/parts/llama_cpp.py).
bash "$(dirname "$0")/install-llama-server.sh"
