#!/usr/bin/env bash
# Prints each setting shardchat cares about beside the recommended value (tuning/sysctl.conf).
set -u
here=$(dirname "$0")
printf '%-36s %-28s %-28s %s\n' setting current recommended ok
while IFS='=' read -r key want; do
    key=$(echo "$key" | xargs); want=$(echo "$want" | xargs)
    [ -z "$key" ] && continue
    case "$key" in \#*) continue ;; esac
    have=$(sysctl -n "$key" 2>/dev/null | xargs || true)
    [ -z "$have" ] && have="(absent)"
    ok=no
    # Single numbers: at least the recommendation; lists: equal.
    if [[ "$want" =~ ^[0-9]+$ && "$have" =~ ^[0-9]+$ ]]; then
        [ "$have" -ge "$want" ] && ok=yes
    elif [ "$have" = "$want" ]; then ok=yes
    fi
    printf '%-36s %-28s %-28s %s\n' "$key" "$have" "$want" "$ok"
done < "$here/sysctl.conf"
printf '%-36s %-28s %-28s\n' "ulimit -n (this shell, hard)" "$(ulimit -Hn)" "2097152"
printf '%-36s %-28s %-28s\n' "ulimit -l (this shell)" "$(ulimit -l)" "unlimited"
