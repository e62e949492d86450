#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# The benchmark's verification must catch a damaged page: run it with the
# corruption hook and pass only if it exits non-zero *because* it found the
# mismatch (and named the page).
set -u
bench=${1:?usage: expect-corruption-detected.sh RDMA-COLO-BENCH}
out=$(RDMA_COLO_BENCH_CORRUPT=1 "$bench" --size 32M --dirty 2M \
    --checkpoints 3 --empty-fences 0 --transport rdma --quiet 2>&1)
rc=$?
echo "$out"
if [ $rc -ne 0 ] && grep -q 'VERIFICATION FAILED.*first differing page [0-9]' <<<"$out"; then
    echo "ok: a page damaged in the COLO cache was detected at its checkpoint (exit $rc)"
    exit 0
fi
echo "FAIL: corruption not reported as a verification failure (exit $rc)"
exit 1
