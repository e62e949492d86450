#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run one case of QEMU's migration-test against the QEMU that
# scripts/build-qemu built (10.2.2 + the COLO-multifd series + our glue).
#
#   run-qtest.sh /x86_64/migration/colo/plain/primary_failover
set -uo pipefail
case=${1:?usage: run-qtest.sh TEST-PATH}
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
qbuild=${RDMA_COLO_QEMU_BUILD:-$top/build/qemu/build}

if [ ! -x "$qbuild/qemu-system-x86_64" ] || [ ! -x "$qbuild/tests/qtest/migration-test" ]; then
    echo "FAIL: no QEMU build in $qbuild: run scripts/build-qemu first (scripts/test does)"
    exit 1
fi
# TCG, whatever /dev/kvm the host has (tests/qemu/tcg/qemu-system-x86_64);
# RDMA_COLO_QTEST_ACCEL=kvm lets migration-test ask for KVM first.
if [ "${RDMA_COLO_QTEST_ACCEL:-tcg}" = kvm ]; then
    export QTEST_QEMU_BINARY=$qbuild/qemu-system-x86_64
else
    export RDMA_COLO_QEMU_REAL=$qbuild/qemu-system-x86_64
    export QTEST_QEMU_BINARY=$top/tests/qemu/tcg/qemu-system-x86_64
fi
# The COLO tests start two TCG guests; each needs a writable TMPDIR.
export TMPDIR=${TMPDIR:-/tmp}
out=$("$qbuild/tests/qtest/migration-test" --full --tap -k -p "$case" 2>&1)
rc=$?
echo "$out"
# A path that matches nothing runs nothing and "passes": refuse that.
if ! grep -qE "^ok [0-9]+ $case\$" <<<"$out"; then
    echo "FAIL: $case did not report ok (exit $rc)"
    exit 1
fi
exit $rc
