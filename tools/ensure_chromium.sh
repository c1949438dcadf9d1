#!/usr/bin/env bash
# Make sure headless Chromium is available for tests/test_docs.py (the docs pages are opened in a real browser).
# Installs Debian's `chromium` package with apt-get when /usr/bin/chromium is missing and we are root;
# otherwise says what to do. Never fails the caller: the docs test itself fails in CI (CI=true) or skips locally.
set -u
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export DEBIAN_FRONTEND=noninteractive
# Debian's MathJax: tools/build_docs_offline.py copies it into _site/ so the docs render LaTeX offline, anywhere.
if [ ! -f /usr/share/javascript/mathjax/config/TeX-AMS_CHTML.js ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q libjs-mathjax >/tmp/ensure_mathjax.log 2>&1 || (apt-get update -q && apt-get install -y -q libjs-mathjax) >>/tmp/ensure_mathjax.log 2>&1) \
    && echo "ensure_chromium: installed libjs-mathjax" || echo "ensure_chromium: libjs-mathjax not installed (the docs build needs it)"
fi
[ -f /usr/share/javascript/mathjax/MathJax.js ] || echo "ensure_chromium: /usr/share/javascript/mathjax is missing: sudo apt-get install -y libjs-mathjax"

if [ -x "$CHROMIUM" ]; then
  echo "ensure_chromium: found $CHROMIUM ($("$CHROMIUM" --version 2>/dev/null | head -n1))"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "ensure_chromium: $CHROMIUM is missing and we are not root; install it with: sudo apt-get install -y chromium"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: $CHROMIUM is missing and apt-get is not available; install Chromium by hand"
  exit 0
fi
echo "ensure_chromium: $CHROMIUM is missing; running apt-get update && apt-get install -y chromium"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -q >/tmp/ensure_chromium.log 2>&1 && apt-get install -y -q chromium >>/tmp/ensure_chromium.log 2>&1 \
   && [ -x "$CHROMIUM" ]; then
  echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null | head -n1)"
else
  echo "ensure_chromium: apt-get failed or $CHROMIUM is still missing (log: /tmp/ensure_chromium.log):"
  tail -n 5 /tmp/ensure_chromium.log
fi
exit 0
