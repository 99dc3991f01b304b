#!/bin/sh
# Install Cyrus IMAP 3.6 for the managed "cyrus" target, beside Dovecot (Debian 12, as root).
#
# cyrus-imapd and cyrus-pop3d conflict with dovecot-imapd at dpkg level (imap-server, pop3-server),
# so they are not installed: they are unpacked (dpkg-deb -x, no maintainer scripts) into
# $CYRUS_ROOT, at the version of the installed cyrus-common. The support packages install normally.
# Idempotent: a second run with everything in place does nothing and needs no network.
set -eu

CYRUS_ROOT=${CYRUS_ROOT:-/opt/mailharness/cyrus}
APT="apt-get -o DPkg::Lock::Timeout=600 -qq"
SUPPORT="cyrus-common cyrus-admin cyrus-clients sasl2-bin"

installed_version() { dpkg-query -W -f '${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1 == "ii" {print $2}'; }

common=$(installed_version cyrus-common || true)
if [ -n "$common" ] && [ "$(cat "$CYRUS_ROOT/VERSION" 2>/dev/null)" = "$common" ] \
   && [ -x "$CYRUS_ROOT/usr/lib/cyrus/bin/imapd" ] && [ -x "$CYRUS_ROOT/usr/lib/cyrus/bin/pop3d" ] \
   && command -v saslpasswd2 >/dev/null; then
    exit 0  # already in place
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-cyrus: run as root (apt-get install, /opt)" >&2
    exit 2
fi

# No systemd here: keep maintainer scripts from starting daemons (cyrus-common pulls in exim4).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi

missing=""
for p in $SUPPORT; do [ -n "$(installed_version "$p")" ] || missing="$missing $p"; done
if [ -n "$missing" ]; then
    $APT update
    DEBIAN_FRONTEND=noninteractive $APT install -y $missing
fi
common=$(installed_version cyrus-common)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt downloads as _apt
(cd "$tmp" && $APT download "cyrus-imapd=$common" "cyrus-pop3d=$common") || {
    $APT update
    (cd "$tmp" && $APT download "cyrus-imapd=$common" "cyrus-pop3d=$common")
}
rm -rf "$CYRUS_ROOT.new"
mkdir -p "$CYRUS_ROOT.new"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$CYRUS_ROOT.new"; done
echo "$common" > "$CYRUS_ROOT.new/VERSION"
rm -rf "$CYRUS_ROOT"
mv "$CYRUS_ROOT.new" "$CYRUS_ROOT"
echo "install-cyrus: Cyrus $common unpacked in $CYRUS_ROOT"
