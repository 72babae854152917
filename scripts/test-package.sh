#!/usr/bin/env bash
# The package tests `make test` runs after `cargo test` (as root, on Debian): builds the .deb and
# .rpm from the debug binary `cargo test` just built (a release build with LTO takes many
# minutes on two cores; what is checked here is the packaging, not the optimiser), then
#   * lintian: no error;
#   * the .rpm: name, version, licence, summary, files and their modes, the configuration as
#     %config(noreplace), the scriptlets, the requirements;
#   * the .deb in a clean Debian root (debootstrap --variant=minbase, cached under
#     target/package-test/): install (files, owners, modes, conffile, the unit enabled), the
#     binary runs there, an upgrade keeps the operator's configuration, remove keeps
#     configuration and state, purge leaves nothing behind;
#   * the .rpm in a copy of that root (rpm --root): install, upgrade and erase, with what the
#     scriptlets ask systemctl.
# Every check that fails stops the script with a message; it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/debug/certrotd
work=target/package-test
cache=$work/debian-$(. /etc/os-release && echo "$VERSION_CODENAME")-minbase
root=$work/root
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
next=$version.1 # the upgrade: a higher version of the same package

passed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() {
  echo "FAILED: $*" >&2
  echo "package-tests: $passed passed, 1 failed"
  exit 1
}
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected [$2], got [$1]"; ok "$3"; }

[ "$(id -u)" -eq 0 ] || fail "run as root: dpkg and chroot need it"
for tool in lintian rpm debootstrap dpkg-deb chroot cargo-deb cargo-generate-rpm; do
  command -v "$tool" >/dev/null || fail "$tool missing: run make deps package-tools"
done
[ -x "$bin" ] || cargo build --locked --bin certrotd

# ---------------------------------------------------------------------------------------------
# Build both packages, and a second .deb one version up for the upgrade
# ---------------------------------------------------------------------------------------------
rm -rf "$work/v1" "$work/v2"
out=$(scripts/package.sh --fast --bin "$bin" --out "$work/v1")
deb=$(sed -n 's/^deb: //p' <<<"$out")
rpm=$(sed -n 's/^rpm: //p' <<<"$out")
out=$(scripts/package.sh --fast --bin "$bin" --version "$next" --out "$work/v2")
deb2=$(sed -n 's/^deb: //p' <<<"$out")
[ -f "$deb" ] && [ -f "$rpm" ] && [ -f "$deb2" ] || fail "packages not built: $deb $rpm $deb2"
ok "built $deb, $rpm and $deb2"

# What both packages install (directories aside), with mode; the .deb adds Debian's own files.
common_files="/etc/certrotd/certrotd.toml 644
/usr/bin/certrotd 755
/usr/lib/systemd/system/certrotd.service 644
/usr/share/bash-completion/completions/certrotd 644
/usr/share/certrotd/prometheus/certrotd-alerts.yaml 644
/usr/share/doc/certrotd/README.md 644
/usr/share/doc/certrotd/examples/extra-paths.conf 644
/usr/share/doc/certrotd/examples/manifest-strategy.conf 644
/usr/share/fish/vendor_completions.d/certrotd.fish 644"
man_files=$(for p in target/assets/man/*.1.gz; do echo "/usr/share/man/man1/$(basename "$p") 644"; done)
[ "$(wc -l <<<"$man_files")" -ge 11 ] || fail "expected a man page per subcommand, got: $man_files"
deb_files=$(printf '%s\n' "$common_files" "$man_files" \
  "/usr/share/doc/certrotd/changelog.Debian.gz 644" \
  "/usr/share/doc/certrotd/copyright 644" \
  "/usr/share/lintian/overrides/certrotd 644" \
  "/usr/share/zsh/vendor-completions/_certrotd 644" | sort)
rpm_files=$(printf '%s\n' "$common_files" "$man_files" \
  "/usr/share/licenses/certrotd/LICENSE 644" \
  "/usr/share/zsh/site-functions/_certrotd 644" | sort)

# ---------------------------------------------------------------------------------------------
# lintian
# ---------------------------------------------------------------------------------------------
if ! lint=$(lintian --fail-on error --display-level '>=warning' "$deb" 2>&1); then
  fail "lintian reports errors on $deb:
$lint"
fi
grep -q '^E:' <<<"$lint" && fail "lintian: $lint"
echo "$lint" | grep -v 'running with root privileges' || true
ok "lintian: no error"

# ---------------------------------------------------------------------------------------------
# The .deb's contents and control data
# ---------------------------------------------------------------------------------------------
got=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {
  m = 0; for (i = 2; i <= 10; i++) m = m * 2 + (substr($1, i, 1) != "-");
  sub(/^\./, "", $6); printf "%s %o %s\n", $6, m, $2 }' | sort)
want=$(sed 's|$| 0/0|' <<<"$deb_files") # root, as uid/gid: cargo-deb stores no names
expect_eq "$got" "$want" ".deb files, modes and owners"
expect_eq "$(dpkg-deb -f "$deb" Package Version Section Priority | tr '\n' ' ')" \
  "Package: certrotd Version: $version-1 Section: admin Priority: optional " ".deb control fields"
dpkg-deb -f "$deb" Depends | grep -q 'libc6' || fail ".deb Depends lacks libc6 (\$auto)"
ok ".deb depends on libc6"
expect_eq "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" "/etc/certrotd/certrotd.toml" ".deb conffiles"

# ---------------------------------------------------------------------------------------------
# The .rpm
# ---------------------------------------------------------------------------------------------
expect_eq "$(rpm -qp --qf '%{NAME}|%{VERSION}|%{LICENSE}|%{SUMMARY}|%{ARCH}' "$rpm")" \
  "certrotd|$version|Apache-2.0|Keeps a Kubernetes node's certificates from expiring|x86_64" \
  ".rpm name, version, licence, summary"
rpm -qip "$rpm" >/dev/null || fail "rpm -qip $rpm"
got=$(rpm -qp --qf '[%{FILENAMES} %{FILEMODES:octal} %{FILEUSERNAME}/%{FILEGROUPNAME}\n]' "$rpm" |
  awk '{ printf "%s %s %s\n", $1, substr($2, length($2) - 2), $3 }' | sort)
want=$(sed 's|$| root/root|' <<<"$rpm_files")
expect_eq "$got" "$want" ".rpm files, modes and owners (rpm -qlp)"
expect_eq "$(rpm -qlp "$rpm" | sort)" "$(cut -d' ' -f1 <<<"$rpm_files")" "rpm -qlp"
expect_eq "$(rpm -qcp "$rpm")" "/etc/certrotd/certrotd.toml" ".rpm configuration files (rpm -qcp)"
expect_eq "$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpm" | grep '^/etc/')" \
  "/etc/certrotd/certrotd.toml cn" ".rpm %config(noreplace)"
scripts=$(rpm -qp --scripts "$rpm")
for want in "postinstall scriptlet" "systemctl --no-reload enable certrotd.service" \
  "systemctl start certrotd.service" "preuninstall scriptlet" \
  "systemctl --no-reload disable --now certrotd.service" "postuninstall scriptlet" \
  "systemctl try-restart certrotd.service"; do
  grep -qF "$want" <<<"$scripts" || fail ".rpm scriptlets lack '$want':
$scripts"
done
ok ".rpm scriptlets (rpm -qp --scripts)"
requires=$(rpm -qp --requires "$rpm")
for want in "systemd" "libc.so.6()(64bit)"; do
  grep -qxF "$want" <<<"$requires" || fail ".rpm requires lacks $want: $requires"
done
ok ".rpm requires systemd and libc"

# ---------------------------------------------------------------------------------------------
# The .deb in a clean Debian root
# ---------------------------------------------------------------------------------------------
if [ ! -x "$cache/usr/bin/dpkg" ]; then
  rm -rf "$cache.partial"
  debootstrap --variant=minbase "$(. /etc/os-release && echo "$VERSION_CODENAME")" \
    "$cache.partial" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap failed; see $work/debootstrap.log"
  mv "$cache.partial" "$cache"
fi
rm -rf "$root"
cp -a "$cache" "$root"
cp "$deb" "$root/tmp/certrotd.deb"
cp "$deb2" "$root/tmp/certrotd-next.deb"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@" </dev/null; }
# Everything in the root, but what dpkg itself keeps about every package (its database, log
# and backups of both) and the two package files copied in above.
snapshot() {
  (cd "$root" && find . -xdev \( -path ./proc -o -path ./sys -o -path ./dev \) -prune -o -print |
    grep -v -e '^\./var/lib/dpkg/' -e '^\./var/log/dpkg\.log$' -e '^\./var/backups/' \
      -e '^\./tmp/certrotd' | sort)
}
before=$(snapshot)

in_root dpkg -i /tmp/certrotd.deb >"$work/dpkg-install.log" 2>&1 ||
  fail "dpkg -i: $(cat "$work/dpkg-install.log")"
ok "dpkg -i in a clean $(basename "$cache") root"
got=$(in_root dpkg -L certrotd | while read -r p; do
  [ -d "$root$p" ] || stat -c '%n %a %U/%G' "$root$p" | sed "s|^$root||"
done | sort)
want=$(sed 's|$| root/root|' <<<"$deb_files")
expect_eq "$got" "$want" "installed files, owners and modes"
expect_eq "$(stat -c '%a %U' "$root/etc/certrotd")" "755 root" "/etc/certrotd"
wants=/etc/systemd/system/multi-user.target.wants/certrotd.service
[ -L "$root$wants" ] || fail "$wants missing: the unit is not enabled"
case "$(readlink "$root$wants")" in
  /lib/systemd/system/certrotd.service | /usr/lib/systemd/system/certrotd.service) ok "unit enabled ($wants)" ;;
  *) fail "$wants points at $(readlink "$root$wants")" ;;
esac
expect_eq "$(in_root certrotd --version)" "certrotd $version" "the installed binary runs"
in_root certrotd config check >"$work/config-check.log" 2>&1 ||
  fail "certrotd config check on the packaged configuration: $(cat "$work/config-check.log")"
ok "the packaged /etc/certrotd/certrotd.toml is valid"

# The operator changes the configuration, adds a drop-in, and the daemon has kept state.
printf '\n# changed by the operator\n[policy]\nrenew_before = "20d"\n' >>"$root/etc/certrotd/certrotd.toml"
changed=$(sha256sum <"$root/etc/certrotd/certrotd.toml")
mkdir -p "$root/etc/certrotd/conf.d" "$root/var/lib/certrotd/backups"
echo '[policy]' >"$root/etc/certrotd/conf.d/50-site.toml"
echo '{}' >"$root/var/lib/certrotd/history.jsonl"

in_root dpkg -i /tmp/certrotd-next.deb >"$work/dpkg-upgrade.log" 2>&1 ||
  fail "upgrade to $next: $(cat "$work/dpkg-upgrade.log")"
expect_eq "$(in_root dpkg-query -W -f '${Version}' certrotd)" "$next-1" "upgraded to $next-1"
expect_eq "$(sha256sum <"$root/etc/certrotd/certrotd.toml")" "$changed" "the upgrade kept the changed configuration"
leftover=$(find "$root/etc/certrotd" -name '*.dpkg-*')
[ -z "$leftover" ] || fail "the upgrade left $leftover"
[ -L "$root$wants" ] || fail "the upgrade disabled the unit"
ok "the unit is still enabled after the upgrade"

in_root dpkg -r certrotd >"$work/dpkg-remove.log" 2>&1 || fail "dpkg -r: $(cat "$work/dpkg-remove.log")"
[ ! -e "$root/usr/bin/certrotd" ] || fail "dpkg -r left /usr/bin/certrotd"
[ -f "$root/etc/certrotd/certrotd.toml" ] && [ -f "$root/var/lib/certrotd/history.jsonl" ] ||
  fail "dpkg -r removed configuration or state (only purge may)"
ok "remove keeps configuration and state"

in_root dpkg --purge certrotd >"$work/dpkg-purge.log" 2>&1 || fail "dpkg --purge: $(cat "$work/dpkg-purge.log")"
after=$(snapshot)
diff <(echo "$before") <(echo "$after") >"$work/purge.diff" ||
  fail "purge left the root different from before the install:
$(cat "$work/purge.diff")"
ok "purge leaves nothing behind ($(wc -l <<<"$before") paths compared)"
rm -rf "$root"

# ---------------------------------------------------------------------------------------------
# The .rpm installed, upgraded and erased by rpm in a copy of the same root (--nodeps: the
# root's packages are dpkg's, not in the rpm database). A systemctl stand-in records what the
# scriptlets ask systemd, and /run/systemd/system says "booted with systemd".
# ---------------------------------------------------------------------------------------------
rpm2=$(ls "$work"/v2/certrotd-*.rpm)
cp -a "$cache" "$root"
mkdir -p "$root/run/systemd/system"
# rpm runs scriptlets with PATH=/sbin:/bin:/usr/sbin:/usr/bin; minbase has no systemd to shadow.
[ ! -e "$root/usr/bin/systemctl" ] || fail "$cache has a systemctl: not a minbase root"
printf '#!/bin/sh\necho "$*" >>/systemctl.log\n' >"$root/usr/bin/systemctl"
chmod 755 "$root/usr/bin/systemctl"
rpm_in_root() { rpm --root "$(realpath "$root")" --nodeps "$@" 2>&1 | grep -v -e 'use Alien' -e 'you know what you are doing' || true; }
rpm --root "$(realpath "$root")" --initdb
rpm_in_root -i "$rpm"
expect_eq "$(rpm --root "$(realpath "$root")" -q certrotd)" "certrotd-$version-1.x86_64" "rpm -i"
got=$(for p in $(cut -d' ' -f1 <<<"$rpm_files"); do stat -c '%n %a %U/%G' "$root$p" | sed "s|^$root||"; done)
expect_eq "$got" "$(sed 's|$| root/root|' <<<"$rpm_files")" "rpm-installed files, owners and modes"
expect_eq "$(cat "$root/systemctl.log")" "daemon-reload
--no-reload preset certrotd.service
--no-reload enable certrotd.service
start certrotd.service" "%post reloads, enables and starts the unit"
: >"$root/systemctl.log"
printf '\n# changed by the operator\n' >>"$root/etc/certrotd/certrotd.toml"
changed=$(sha256sum <"$root/etc/certrotd/certrotd.toml")
rpm_in_root -U "$rpm2"
expect_eq "$(rpm --root "$(realpath "$root")" -q certrotd)" "certrotd-$next-1.x86_64" "rpm -U"
expect_eq "$(sha256sum <"$root/etc/certrotd/certrotd.toml")" "$changed" "rpm -U kept the changed configuration"
[ -z "$(find "$root/etc/certrotd" -name '*.rpm*')" ] || fail "rpm -U left $(ls "$root/etc/certrotd")"
expect_eq "$(cat "$root/systemctl.log")" "daemon-reload
daemon-reload
try-restart certrotd.service" "the upgrade's scriptlets restart a running unit"
: >"$root/systemctl.log"
rpm_in_root -e certrotd
[ ! -e "$root/usr/bin/certrotd" ] || fail "rpm -e left /usr/bin/certrotd"
[ -f "$root/etc/certrotd/certrotd.toml.rpmsave" ] || fail "rpm -e did not save the changed configuration"
expect_eq "$(cat "$root/systemctl.log")" "--no-reload disable --now certrotd.service
daemon-reload" "%preun stops and disables the unit"
rm -rf "$root"

echo "package-tests: $passed passed, 0 failed"
