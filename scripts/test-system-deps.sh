#!/usr/bin/env bash
# What the suite needs from the system besides Python and Node: PostgreSQL's server binaries (tests/cluster start a
# throwaway server, tests/pg.py) and Debian's chromium (tests/e2e/test_ui.py drives it through Playwright; there is
# no Playwright browser download without the internet). Installed with apt when missing and we are root (CI is);
# otherwise the missing packages are named and the test run stops here.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} (apt) for the test suite" >&2
  apt-get update -qq
  # --no-upgrade: an image that already has some of their dependencies is left alone
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade "${missing[@]}"
else
  echo "the test suite needs: ${missing[*]} (e.g. sudo apt install ${missing[*]})" >&2
  exit 1
fi
