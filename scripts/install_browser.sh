#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the LLaMA-Board browser tests (browser downloads are impossible here),
# and a Chinese font so the screenshots of the Chinese labels show glyphs rather than boxes.
set -euo pipefail
font=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -f "$font" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "[browser] chromium, chromium-driver or fonts-wqy-microhei is missing; install them as root:" \
    "apt-get install chromium chromium-driver fonts-wqy-microhei" >&2
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]  # the tests run without the font
  exit
fi
echo "[browser] installing chromium, chromium-driver and fonts-wqy-microhei with apt (about a minute)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-wqy-microhei >&2
