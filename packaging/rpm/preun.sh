# %preun: what %systemd_preun does. $1 = 0 on erase (stop and disable), 1 on upgrade (keep running).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now certrotd.service >/dev/null 2>&1 || :
fi
