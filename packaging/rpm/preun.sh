# opsbro %preun ($1: 0 erase, 1+ upgrade): stop and disable the agent on erase only.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now opsbro.service >/dev/null 2>&1 || :
    else
        /etc/init.d/opsbro stop >/dev/null 2>&1 || :
        command -v chkconfig >/dev/null 2>&1 && chkconfig --del opsbro >/dev/null 2>&1 || :
    fi
fi
