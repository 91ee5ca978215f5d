#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the LLaMA-Board browser tests (browser downloads are impossible here).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "[browser] chromium and chromium-driver are missing; install them as root: apt-get install chromium chromium-driver" >&2
  exit 1
fi
echo "[browser] installing chromium and chromium-driver with apt (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
