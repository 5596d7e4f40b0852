#!/usr/bin/env bash
# Renders a Valley HTML file in headless Chromium, offline: writes a PNG screenshot and prints the DOM after rendering.
#   scripts/render-html.sh report.html shot.png > dom.html
# Chromium runs with networking features off and a fresh profile; the page itself forbids network loads (CSP).
set -euo pipefail
html="$(realpath "$1")"; png="$(realpath -m "$2")"
chrome="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$chrome" ] || { echo "render-html: no chromium found (apt-get install chromium)" >&2; exit 2; }
profile="$(mktemp -d)"; trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --use-gl=swiftshader --enable-unsafe-swiftshader --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile"
       --window-size=1200,900 --virtual-time-budget=15000 --hide-scrollbars)
"$chrome" "${flags[@]}" --screenshot="$png" "file://$html" >/dev/null 2>&1
"$chrome" "${flags[@]}" --dump-dom "file://$html" 2>/dev/null
