#!/bin/sh
# Install GNU Mailutils 3.15 (imap4d, pop3d) for the managed "mailutils" target (Debian 12, as root).
#
# Unlike Cyrus, mailutils-imap4d and mailutils-pop3d do not conflict with Dovecot and install
# normally. Their maintainer scripts would start both daemons on 0.0.0.0:143 and :110, so a
# /usr/sbin/policy-rc.d that exits 101 is put in place first (when there is none).
# Idempotent: a second run with both daemons installed does nothing and needs no network.
set -eu

PACKAGES="mailutils-imap4d mailutils-pop3d"
APT="apt-get -o DPkg::Lock::Timeout=600 -qq"

if [ -x /usr/sbin/imap4d ] && [ -x /usr/sbin/pop3d ]; then
    exit 0  # already in place
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-mailutils: run as root (apt-get install)" >&2
    exit 2
fi

if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi

DEBIAN_FRONTEND=noninteractive $APT install -y $PACKAGES || {
    $APT update  # a fresh machine has no package lists yet
    DEBIAN_FRONTEND=noninteractive $APT install -y $PACKAGES
}
echo "install-mailutils: $(/usr/sbin/imap4d --version | head -1) installed"
