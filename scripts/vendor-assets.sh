#!/usr/bin/env bash
# The web console's front-end build step: fetch Chart.js from npm and copy its UMD bundle into
# the package (committed, so nothing is downloaded at run time). Re-run to upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${CHARTJS_VERSION:-4.6.1}"
tmp="$(mktemp -d)"
(cd "$tmp" && npm pack "chart.js@$VERSION" >/dev/null && tar xzf chart.js-*.tgz)
cp "$tmp/package/dist/chart.umd.min.js" src/afinar/webui/static/vendor/chart.umd.min.js
cp "$tmp/package/LICENSE.md" src/afinar/webui/static/vendor/LICENSE-chart.js.md
rm -rf "$tmp"
echo "vendored chart.js $VERSION"
