#!/usr/bin/env bash
# Create .venv (if absent) and install ticketsolver with every extra, pinned by constraints.txt.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'

# The browser test (tests/api/test_browser.py) drives Debian's chromium through chromium-driver with Selenium.
# Installed only where apt-get exists and we are root or have passwordless sudo; a failure never fails the
# bootstrap (the test then skips and says why).
browser_skipped() {
    echo "bootstrap: chromium/chromium-driver not installed ($1); the browser test will skip"
}
install_browser() {
    if command -v chromium >/dev/null 2>&1 && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        browser_skipped "no apt-get"
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
            sudo=(sudo -n)
        else
            browser_skipped "not root and no passwordless sudo"
            return 0
        fi
    fi
    local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
        chromium chromium-driver)
    # try the package lists we have first; refresh them only when that fails
    if ! timeout 900 "${install[@]}" >/dev/null 2>&1; then
        if ! { timeout 300 "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 &&
            timeout 900 "${install[@]}" >/dev/null 2>&1; }; then
            browser_skipped "apt-get could not install them"
        fi
    fi
}
install_browser
