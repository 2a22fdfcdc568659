#!/usr/bin/env bash
# Install the system packages listed in infra/apt-packages.txt that are missing (Debian/Ubuntu).
# Nothing is asked of apt when all are installed (dpkg-query check), so repeat runs cost nothing.
# As root: apt-get directly; otherwise through sudo. Where neither works, print what to run and
# go on: only the browser check of the report and non-Latin fonts need these, and the tests
# that need them skip with a reason.
set -euo pipefail
list="${1:-$(dirname "$0")/apt-packages.txt}"
mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$list" | grep -v '^$' || true)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

command_line="apt-get install -y --no-install-recommends ${missing[*]}"
warn() {
  echo "synthcat setup: WARNING: system packages missing: ${missing[*]}" >&2
  echo "synthcat setup: $1; install them with:  sudo $command_line" >&2
  exit 0
}
command -v apt-get >/dev/null || warn "no apt-get on this machine"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null; then
  as_root=(sudo)
else
  warn "not root and no sudo"
fi
echo "synthcat setup: installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists yet: update once, only when the install needs it.
"${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
  || { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; } \
  || warn "apt-get failed (offline, or no permission)"
