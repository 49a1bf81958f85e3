#!/usr/bin/env bash
# The vision recipes on real CIFAR-10 images, on a GPU: accuracy and seconds.
#
#   benchmarks/gpu_speedrun.sh path/to/cifar10-jpeg-train.tgz [speedrun runs, default 3]
#
# The archive holds the 50,000 training images as JPEGs (train/<class>/<n>.jpg). They become a
# data=image_folder dataset: 45,000 train and 5,000 held out, which validate and test (there are
# no test images in the archive). Prints, per speedrun (experiment=cifar10_speedrun): the
# held-out accuracy and the training time; then a few epochs of vit (tiny) for throughput; then
# `data.loader=device` against the DataLoader paths (benchmarks/loaders.py) on the GPU.
# Environment: LOG=<file> keeps the full output of every run there; EXTRA="<overrides>" is added
# to every training command (e.g. a CPU dry run: EXTRA="+trainer.limit_train_batches=2").
set -euo pipefail
tgz=${1:?usage: $0 path/to/cifar10-jpeg-train.tgz [runs]}
runs=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$tgz" -C "$work"
export DATA_DIR=$work/data LOG_DIR=$work/logs PYTHONUNBUFFERED=1
log=${LOG:-/dev/null}
extra=${EXTRA:-}
python -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"

data="data=image_folder data.root=$work/train data.val_size=5000 data.test_size=0"
quiet="logger=csv callbacks.model_summary=null"
for seed in $(seq 1 "$runs"); do
  echo "== speedrun, seed $seed"
  python -m common.train project=cifar10 experiment=cifar10_speedrun $data $quiet seed="$seed" $extra 2>&1 \
    | tee -a "$log" | grep -E "^epoch|training took|test/acc|Error|error" || true
done

echo "== vit tiny, 3 epochs, bf16"
python -m common.train project=vit $data $quiet trainer.max_epochs=3 trainer.precision=bf16-mixed $extra 2>&1 \
  | tee -a "$log" | grep -E "^epoch|test/acc|Error|error" || true

echo "== loaders"
python -m benchmarks.loaders --batch-size 512 ${LOADER_SAMPLES:+--samples $LOADER_SAMPLES}
