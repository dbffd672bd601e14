#!/usr/bin/env bash
# Installs the system packages the annotation service's tests need: Debian's chromium (driven by
# Playwright for the browser tests; `playwright install` cannot fetch browsers offline) and PostgreSQL
# (the store's tests start a throwaway cluster). Idempotent: installs only what is missing.
#
#   sudo scripts/install-system-deps.sh
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
# initdb/pg_ctl live under /usr/lib/postgresql/<version>/bin on Debian.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    echo "system deps present: chromium, postgresql"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}" fonts-dejavu-core
