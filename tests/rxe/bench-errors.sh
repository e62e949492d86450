#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# rdma-colo-bench's failure modes, each must end in one clear error line and
# a non-zero exit, never a hang: memlock too low, nobody listening, no
# token, wrong token, the secondary killed mid-run, a page size QEMU does
# not use.  Runs under scripts/with-rxe.
set -u
bench=$(realpath "${1:?usage: bench-errors.sh RDMA-COLO-BENCH}")
# The secondary's address: the other node's on the pair topology.
addr=${RDMA_COLO_TEST_PEER_ADDR:-${RDMA_COLO_TEST_ADDR:?run under scripts/with-rxe}}
fail=0
expect() { # NAME RC OUTPUT PATTERN
    if [ "$2" -ne 0 ] && grep -qE "$4" <<<"$3"; then
        echo "ok: $1: exit $2, \"$(grep -E "$4" <<<"$3" | head -n1)\""
    else
        echo "FAIL: $1: exit $2, output:"
        echo "$3"
        fail=1
    fi
}
cd "${TMPDIR:-/tmp}"
small=(--size 32M --dirty 1M --checkpoints 2 --empty-fences 0 --quiet)

out=$(timeout 60 "$bench" --transport rdma --page-size 8192 "${small[@]}" 2>&1)
expect "page size other than 4096 or 2M" $? "$out" \
    "page-size must be 4096 or 2M"

# memlock: root ignores RLIMIT_MEMLOCK (CAP_IPC_LOCK), so drop to nobody.
out=$( (ulimit -l 64; setpriv --reuid=65534 --regid=65534 --clear-groups \
    --inh-caps=-all --bounding-set=-all \
    timeout 60 "$bench" --transport rdma "${small[@]}") 2>&1)
expect "memlock too low" $? "$out" "locked-memory limit is 64 KiB.*ulimit -l"

out=$(timeout 60 "$bench" --role primary --uri "rdma-colo:$addr:9?token=unreachable-test-token" \
    --transport rdma "${small[@]}" 2>&1)
expect "peer unreachable" $? "$out" "refused \(nobody listening there\?\)"

out=$(timeout 60 "$bench" --role primary --uri "rdma-colo:$addr:9?token=Sh0rt" \
    --transport rdma "${small[@]}" 2>&1)
expect "a short token on a fabric address" $? "$out" \
    "the token has 5 characters; off loopback \($addr\) it needs at least 16"
[[ $out != *Sh0rt* ]] || { echo "FAIL: the short token was printed: $out"; fail=1; }

out=$(timeout 60 "$bench" --role primary --uri "rdma-colo:$addr:9" \
    --transport rdma "${small[@]}" 2>&1)
expect "no token on a fabric address" $? "$out" \
    "refusing to connect to $addr without a token"

port=$((30000 + $$ % 20000))
timeout 60 "$bench" --role secondary --uri "rdma-colo:$addr:$port?token=right-token-0123456789" \
    --transport rdma "${small[@]}" >/dev/null 2>&1 &
sec=$!
sleep 2
out=$(timeout 60 "$bench" --role primary --uri "rdma-colo:$addr:$port?token=wrong-token-0123456789" \
    --transport rdma "${small[@]}" 2>&1)
expect "wrong token" $? "$out" "refused the connection: wrong session token"
kill $sec 2>/dev/null
wait $sec 2>/dev/null

port=$((port + 1))
"$bench" --role secondary --uri "rdma-colo:$addr:$port?token=kill-test-token-0123" --transport rdma \
    --size 64M --dirty 8M --checkpoints 1000 --quiet >/dev/null 2>&1 &
sec=$!
sleep 2
# The kill comes 6 s into the primary's run, mostly in its checkpoints; on
# a slow machine it may still be connecting its channels or registering:
# any phase must end with the cause named (a peer that disconnected, a
# failed work request or a reset), never a hang.
( sleep 6; kill -9 $sec ) &
start=$(date +%s)
out=$(timeout 120 "$bench" --role primary --uri "rdma-colo:$addr:$port?token=kill-test-token-0123" \
    --transport rdma --size 64M --dirty 8M --checkpoints 1000 --quiet 2>&1)
rc=$?
expect "secondary killed mid-run ($(( $(date +%s) - start )) s)" $rc "$out" \
    "error: rdma: .*(disconnected|failed|reset)"
wait
exit $fail
