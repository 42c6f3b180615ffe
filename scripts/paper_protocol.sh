#!/bin/bash
# The paper's Fashion-MNIST protocol for one class-conditional 32x32 network, every step
# resumable (rerun the same command after an interruption): ELS and LS calibration on
# 16 seeds disjoint from the evaluation seeds, then Table 2 (network 20 steps) and
# Table 1 (network 150 steps) with the own calibration and with the published schedule;
# if a second network is given, the ceiling and both tables against it (own schedules);
# then ROOT/report.md.
# docs/calibration.md, "The paper's protocol", explains every command.
#
#   NET=model.pt ROOT=runs/proto SCHEDULE=fashion_mnist_resnet_zeros [NET_B=model_b.pt] \
#       [SEEDS=0-99] [CANDIDATES=3-17] [DATA=/usr/share/datasets/fashion-mnist] bash scripts/paper_protocol.sh
#
# CANDIDATES: the calibrated patch sizes; the paper's 3-17 suits its ResNet (receptive field
# 17), while its UNet's published schedule reaches 25, so give a UNet 3-27.
set -euo pipefail
: "${NET:?set NET to the network checkpoint}" "${ROOT:?set ROOT to the output folder}"
SCHEDULE=${SCHEDULE:-fashion_mnist_resnet_zeros}
SEEDS=${SEEDS:-0-99}
CANDIDATES=${CANDIDATES:-3-17}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
PAPER=${PAPER:-resnet}
cf() { python -m creativity_fast "$@" --data "$DATA" --resize 32 --no-progress; }
mkdir -p "$ROOT"
set -x
cf calibrate --net "$NET" --limit 5000 --machine els --seeds 1000-1015 --candidates "$CANDIDATES" --out "$ROOT/cal_els"
cf calibrate --net "$NET" --limit 5000 --machine local --seeds 1000-1015 --candidates "$CANDIDATES" --out "$ROOT/cal_ls"
own=(--patch-schedule "$ROOT/cal_els/calibration.json" --schedule-for "local=$ROOT/cal_ls/calibration.json")
# Finished samples are reused where their settings match (compare checks that and
# recomputes otherwise): the machines' do not depend on the network's step count, the
# network's not on the machines' schedule.
reuse() { mkdir -p "$2"; for f in "${@:3}"; do [ -f "$1/$f" ] && cp -n "$1/$f" "$2/"; done; return 0; }
for sched in own published; do
    args=("${own[@]}"); [ $sched = published ] && args=(--patch-schedule "$SCHEDULE")
    reuse "$ROOT/table2_own" "$ROOT/table2_$sched" per_seed_network.npz
    cf compare --net "$NET" --seeds "$SEEDS" --steps 20 --net-steps 20 "${args[@]}" --out "$ROOT/table2_$sched"
    reuse "$ROOT/table2_$sched" "$ROOT/table1_$sched" per_seed_{els,local,ideal}.npz
    reuse "$ROOT/table1_own" "$ROOT/table1_$sched" per_seed_network.npz
    cf compare --net "$NET" --seeds "$SEEDS" --steps 20 --net-steps 150 "${args[@]}" --out "$ROOT/table1_$sched"
done
if [ -n "${NET_B:-}" ]; then
    for n in 20 150; do
        reuse "$ROOT/table$([ $n = 20 ] && echo 2 || echo 1)_own" "$ROOT/ceiling_$n" per_seed_network.npz
        cf compare --net "$NET" --net-ceiling "$NET_B" --machine none --seeds "$SEEDS" --net-steps $n --out "$ROOT/ceiling_$n"
    done
    # The machines calibrated on NET, judged against NET_B: is their agreement a property of
    # the recipe or of one network? Their samples are reused; only NET_B's are new.
    for n in 20 150; do
        t=table$([ $n = 20 ] && echo 2 || echo 1)
        reuse "$ROOT/${t}_own" "$ROOT/${t}_own_net_b" per_seed_{els,local,ideal}.npz
        cf compare --net "$NET_B" --seeds "$SEEDS" --steps 20 --net-steps $n "${own[@]}" --out "$ROOT/${t}_own_net_b"
    done
fi
python scripts/protocol_report.py "$ROOT" --paper "$PAPER"
