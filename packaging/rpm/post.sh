# opsbro %post ($1: 1 install, 2+ upgrade). Same layout and choices as the Debian postinst: the
# agent runs as root, state in /var/lib/opsbro (0700), logs in /var/log/opsbro; enabled at boot,
# started on first install only with OPSBRO_START_ON_INSTALL=yes, restarted on upgrade if running.
[ -e /var/lib/opsbro ] || install -d -m 0700 -o root -g root /var/lib/opsbro
[ -e /var/log/opsbro ] || install -d -m 0750 -o root -g root /var/log/opsbro
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable opsbro.service >/dev/null 2>&1 || :
        [ "${OPSBRO_START_ON_INSTALL:-no}" = yes ] && systemctl start opsbro.service || :
    else
        systemctl try-restart opsbro.service >/dev/null 2>&1 || :
    fi
else
    command -v chkconfig >/dev/null 2>&1 && chkconfig --add opsbro >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        [ "${OPSBRO_START_ON_INSTALL:-no}" = yes ] && /etc/init.d/opsbro start || :
    else
        /etc/init.d/opsbro try-restart || :
    fi
fi
