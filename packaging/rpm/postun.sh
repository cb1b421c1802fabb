# opsbro %postun ($1: 0 erase, 1+ upgrade). RPM has no purge: an erased package leaves
# /var/lib/opsbro and /var/log/opsbro (and edited configuration as .rpmsave); remove them by hand.
[ -d /run/systemd/system ] && systemctl daemon-reload >/dev/null 2>&1 || :
