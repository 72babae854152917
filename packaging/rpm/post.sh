# %post: what %systemd_post does, then start (the .deb starts on install too). $1 = 1 on a first
# install, 2 on an upgrade (restarted by %postun of the old package instead).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset certrotd.service >/dev/null 2>&1 || :
    systemctl --no-reload enable certrotd.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start certrotd.service >/dev/null 2>&1 || :
    fi
fi
