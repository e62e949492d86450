#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The fabric wrapper's own contract: CMD's exit status, stdout and stderr
# come back unchanged and separate, and CMD runs with an ACTIVE RDMA device
# whose name and address are in the environment; a VM that does not get to
# CMD within RDMA_COLO_VM_BOOT_TIMEOUT is an error (125).
set -uo pipefail
with_rxe=${1:?usage: with-rxe-selftest.sh PATH-TO-with-rxe}
fail=0
check() { # description, condition result
    if [ "$2" = 0 ]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}

out=$(mktemp); err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

"$with_rxe" -- sh -c '
    echo "dev=$RDMA_COLO_TEST_DEV addr=$RDMA_COLO_TEST_ADDR fabric=$RDMA_COLO_FABRIC"
    grep -q ACTIVE /sys/class/infiniband/$RDMA_COLO_TEST_DEV/ports/1/state && echo port-active
    ip -4 -o addr show | grep -qw "$RDMA_COLO_TEST_ADDR" && echo addr-present
    echo "memlock=$(ulimit -l)"
    echo to-stderr >&2
    exit 3' >"$out" 2>"$err"
rc=$?
cat "$out"
# On a fabric failure, say why (with-rxe's own message is on stderr).
[ $rc = 3 ] || sed 's/^/stderr: /' "$err"
check "exit status 3 propagated (got $rc)" $([ $rc = 3 ]; echo $?)
check "device named in RDMA_COLO_TEST_DEV" $(grep -qE '^dev=[^ ]+ addr=[0-9.]+ ' "$out"; echo $?)
check "device port is ACTIVE" $(grep -qx port-active "$out"; echo $?)
check "RDMA_COLO_TEST_ADDR is configured" $(grep -qx addr-present "$out"; echo $?)
check "memlock unlimited" $(grep -qx memlock=unlimited "$out"; echo $?)
check "stderr kept apart from stdout" $(grep -qx to-stderr "$err" && ! grep -q to-stderr "$out"; echo $?)

"$with_rxe" -- false
rc=$?
check "'false' exits non-zero (got $rc)" $([ $rc != 0 ]; echo $?)

# A micro-VM that does not get to CMD in time (here: 1 s, too short to
# boot) is a fabric error naming the limit, not a wait for the caller's
# timeout.  Only where the VM is how the fabric is had.
if grep -q '^dev=[^ ]* addr=[0-9.]* fabric=vm$' "$out"; then
    start=$(date +%s)
    RDMA_COLO_VM_BOOT_TIMEOUT=1 "$with_rxe" -- true 2>"$err"
    rc=$?
    took=$(($(date +%s) - start))
    check "a VM boot over RDMA_COLO_VM_BOOT_TIMEOUT=1 fails with 125 in ${took} s (got $rc): $(head -n1 "$err")" \
        $([ $rc = 125 ] && [ $took -lt 30 ] && grep -q "did not start the command within 1 s" "$err"; echo $?)
fi
exit $fail
