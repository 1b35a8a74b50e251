#!/usr/bin/env bash
# Fetch Jane Austen's six novels (Debian package r-cran-janeaustenr, MIT) and extract the R
# package folder to ROOT/janeaustenr, where effdl.data.load_text("austen") looks for it.
#
#   usage: scripts/setup-text-data.sh [ROOT]
#   ROOT: $EFFDL_TEXT_DIR if set, else the argument (the Makefile passes .venv/share/effdl-text,
#         which is sys.prefix/share/effdl-text for the project's venv, the library's default).
#
# Idempotent: does nothing when the data is already there. Fails loudly when it cannot fetch it.
set -euo pipefail

PKG=r-cran-janeaustenr
root="${EFFDL_TEXT_DIR:-${1:-}}"
if [ -z "$root" ]; then
    echo "setup-text-data: give the target folder (or set EFFDL_TEXT_DIR)" >&2
    exit 2
fi
dest="$root/janeaustenr"

if [ -s "$dest/data/Rdata.rdx" ] && [ -s "$dest/data/Rdata.rdb" ]; then
    echo "setup-text-data: $PKG already in $dest"
    exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "setup-text-data: apt-get/dpkg-deb not found: this step needs a Debian-based system" \
         "(or extract $PKG_*.deb yourself so that $dest/data/Rdata.rdx exists)" >&2
    exit 1
fi

mkdir -p "$root"
work="$(mktemp -d "$root/.janeaustenr-setup.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# An empty package list (fresh container) knows no packages: refresh it once.
if ! apt-cache show "$PKG" >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-text-data: apt does not know $PKG and refreshing its list needs root:" \
             "run 'sudo apt-get update', then run this again" >&2
        exit 1
    fi
    apt-get update -qq
fi

# As root, apt drops to the _apt user to download, which cannot enter a private temp folder
# (it then warns and runs as root anyway): say so up front to skip the misleading warning.
sandbox=()
[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download -q "${sandbox[@]}" "$PKG")
deb="$(ls "$work"/${PKG}_*.deb)"
dpkg-deb -x "$deb" "$work/x"
src="$work/x/usr/lib/R/site-library/janeaustenr"
if [ ! -s "$src/data/Rdata.rdx" ] || [ ! -s "$src/data/Rdata.rdb" ]; then
    echo "setup-text-data: $deb has no data/Rdata.rdx + Rdata.rdb under usr/lib/R/site-library/janeaustenr:" \
         "the package layout changed; update scripts/setup-text-data.sh" >&2
    exit 1
fi
cp "$work/x/usr/share/doc/$PKG/copyright" "$src/copyright" 2>/dev/null || true
echo "$(basename "$deb") sha256 $(sha256sum "$deb" | cut -d' ' -f1)" > "$src/SOURCE"
# Rename into place, so a half-extracted folder never looks installed.
rm -rf "$dest"
mv "$src" "$dest"
echo "setup-text-data: $PKG extracted to $dest"
