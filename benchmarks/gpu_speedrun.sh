#!/usr/bin/env bash
# The vision recipes on real CIFAR-10 images, on a GPU: seconds, accuracy, and the ratio to the
# hand-written reference.
#
#   REFERENCE=path/to/airbench94_muon.py benchmarks/gpu_speedrun.sh path/to/cifar10-jpeg-train.tgz [runs, default 5]
#
# The archive holds the 50,000 training images as JPEGs (train/<class>/<n>.jpg). They become a
# data=image_folder dataset: 45,000 train and 5,000 held out (data.seed=0), which validate and
# test (there are no test images in the archive). Runs, in order:
# 1. python -m benchmarks.speedrun: experiment=cifar10_speedrun (one warm-up run, then `runs`
#    timed ones) and, when REFERENCE names your copy of airbench94_muon.py (from
#    github.com/KellerJordan/cifar10-airbench; not vendored here), the reference on the same
#    5,000/45,000 split, `runs` times after its warm-up; prints both and the time ratio, and
#    writes the summary to benchmarks/results/speedrun_vs_airbench_<gpu>.txt.
# 2. vit (tiny), 3 epochs, bf16: throughput; then benchmarks/vit.py --compile: the step's time,
#    fused AdamW, compile and its payback, MFU, the attention kernel SDPA chose.
# 3. detection (synthetic shapes), 2 epochs, bf16: throughput.
# 4. benchmarks/stack.py --device cuda: the stack against a plain loop at GPU pace (mnist
#    batch 128), and --overhead (width 4, batch 8): the per-step cost.
# 5. torch.profiler summaries of the speed recipe, vit and detection (benchmarks/profile.py).
# 6. `data.loader=device` against the DataLoader paths (benchmarks/loaders.py).
# The whole output goes to benchmarks/results/gpu_speedrun_<gpu>.txt (RESULTS=<file> moves it).
# Environment: LOG=<file> keeps the full output of every run there; EXTRA="<overrides>" is added
# to every training command (e.g. a CPU dry run: EXTRA="+trainer.limit_train_batches=2").
set -euo pipefail
tgz=${1:?usage: REFERENCE=airbench94_muon.py $0 path/to/cifar10-jpeg-train.tgz [runs]}
runs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$tgz" -C "$work"
export DATA_DIR=$work/data LOG_DIR=$work/logs PYTHONUNBUFFERED=1
log=${LOG:-/dev/null}
extra=${EXTRA:-}
gpu=$(python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')")
slug=$(echo "$gpu" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/_/g; s/^_|_$//g')
results=${RESULTS:-$here/results/gpu_speedrun_$slug.txt}
mkdir -p "$(dirname "$results")"
exec > >(tee "$results") 2>&1

echo "== speed recipe vs airbench94_muon, $runs runs each"
python -m benchmarks.speedrun --root "$work/train" --runs "$runs" --extra "$extra" --log "$log" \
  ${REFERENCE:+--reference "$REFERENCE"}

data="data=image_folder data.root=$work/train data.val_size=5000 data.test_size=0"
quiet="logger=csv print_config=false"
echo "== vit tiny, 3 epochs, bf16"
python -m common.train project=vit $data $quiet trainer.max_epochs=3 trainer.precision=bf16-mixed $extra 2>&1 \
  | tee -a "$log" | grep -E "^epoch|test/acc|Error|error" || true

python -m benchmarks.vit --compile

echo "== detection, 2 epochs, bf16"
python -m common.train project=detection $quiet trainer.max_epochs=2 trainer.precision=bf16-mixed $extra 2>&1 \
  | tee -a "$log" | grep -E "^epoch|test/map|Error|error" || true

echo "== stack vs plain loop on the GPU"
python -m benchmarks.stack --device cuda --rounds 3
python -m benchmarks.stack --device cuda --overhead --rounds 3

echo "== profiles: where a step's time goes (benchmarks/profile.py)"
python -m benchmarks.profile project=cifar10 experiment=cifar10_speedrun $data $extra
python -m benchmarks.profile project=vit $data trainer.precision=bf16-mixed $extra
python -m benchmarks.profile project=detection trainer.precision=bf16-mixed $extra

echo "== loaders"
python -m benchmarks.loaders --batch-size 512 ${LOADER_SAMPLES:+--samples $LOADER_SAMPLES}
echo "output written to $results"
