# %postun: what %systemd_postun_with_restart does. $1 = 0 after erase, 1 after an upgrade, when the
# new binary is in place: restart the daemon if it was running. State under /var/lib/certrotd and
# a changed configuration (saved as .rpmsave) are kept on erase: RPM has no purge.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart certrotd.service >/dev/null 2>&1 || :
fi
