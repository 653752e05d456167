#!/usr/bin/env bash
# Headless Chromium for the browser check of report.html (bench/check_report.py, tests/test_report_browser.py):
# Debian's chromium and chromium-driver if missing, then selenium. Optional: nothing else in acdc needs a browser.
# Usage: bash scripts/install_browser.sh            (from anywhere; idempotent)
set -euo pipefail
PY=${PYTHON:-python3}
SELENIUM_VERSION=${ACDC_SELENIUM_VERSION:-4.27.1}

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "[install_browser] chromium and chromium-driver"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver fonts-dejavu-core >/dev/null
  else
    echo "[install_browser] error: no apt-get; install chromium and its chromedriver yourself" >&2
    exit 1
  fi
fi

if ! "$PY" -c "import selenium, sys; sys.exit(0 if selenium.__version__ == '$SELENIUM_VERSION' else 1)" 2>/dev/null; then
  echo "[install_browser] selenium==$SELENIUM_VERSION"
  "$PY" -m pip install -q "selenium==$SELENIUM_VERSION"
fi

echo "[install_browser] $(chromium --version 2>/dev/null || echo 'chromium: version unknown')"
echo "[install_browser] $(chromedriver --version 2>/dev/null | head -n 1 || echo 'chromedriver: version unknown')"
"$PY" -c "import selenium; print('[install_browser] selenium', selenium.__version__)"
