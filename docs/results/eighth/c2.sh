#!/usr/bin/env bash
# Call 2 (carry .device/fidB .device/s12): assemble the FID network's weights, watch the driver for $1 seconds.
set -u
K=runs/keep; mkdir -p $OUT/c2
[ -f $K/fid16.pt ] || { cat .device/fidB/* >> $K/fid16.part.aa && mv $K/fid16.part.aa $K/fid16.pt; }
sha1sum $K/fid16.pt > $OUT/c2/fid-sha1.txt
sleep $1
cat $K/drive/state; tail -n 8 $K/drive/q-train.txt 2>/dev/null
for f in runs/quality/*.log; do echo "== $f"; grep -v "^\[" $f | tail -n 2; done 2>/dev/null
cp $K/drive/* runs/quality/*.log $OUT/c2/ 2>/dev/null; cd $OUT && tar czf c2.tgz c2 && rm -rf c2
