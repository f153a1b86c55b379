#!/usr/bin/env bash
# CI for the code sandbox (reward=code): bubblewrap and the system Python it runs programs with must be
# present, and bwrap must be able to create its namespaces as the unprivileged sandbox user. Run it before
# pytest: the sandbox tests fail (they do not skip) where it cannot work.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
[ -x /usr/bin/python3 ] || missing+=(python3)   # reward.sandbox.python's default
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
# The same isolation the sandbox asks for, as the user it runs as when rlvr runs as root (uid 65534).
as_user=()
[ "$(id -u)" = 0 ] && as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
"${as_user[@]}" bwrap --unshare-all --unshare-user --disable-userns --as-pid-1 --die-with-parent --new-session --cap-drop ALL \
  --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
  --dev /dev --proc /proc --tmpfs /tmp --remount-ro / --clearenv \
  /usr/bin/python3 -I -S -c 'import os; assert os.getpid() == 1; print("bubblewrap sandbox: ok")'
