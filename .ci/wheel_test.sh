#!/usr/bin/env bash
# The package as a user gets it: build a wheel of the checkout, install it into a fresh virtualenv (versions
# held to requirements.txt's pins, so pip reuses its cache), and from a directory outside the checkout run one
# tiny pretraining step, an export and a reload, through the `simclr-tf` command and through `import simclr_tf`.
# Usage: .ci/wheel_test.sh [PYTHON]   (PYTHON builds the wheel and makes the virtualenv; default python3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --constraint "$repo/requirements.txt" "$work"/dist/simclr_tf-*.whl
cd "$work"
tiny=(--dataset=builtin_shapes --eval_split=test --image_size=16 --resnet_depth=18 --width_multiplier=0.125 --num_proj_layers=2
      --proj_out_dim=8 --train_batch_size=8 --temperature=0.5 --learning_rate=0.5 --warmup_epochs=0
      --train_steps=1 --verbose=0 --seed=0 --model_dir="$work/run")
venv/bin/simclr-tf --mode=train "${tiny[@]}"
venv/bin/simclr-tf --mode=export "${tiny[@]}" | tee export.log
grep -q "Exported .* (step 1) to $work/run/saved_model/1" export.log
cp "$repo/.ci/installed_api_check.py" .
venv/bin/python installed_api_check.py "$work/venv" "$work/run"
echo "wheel test passed: the installed simclr-tf command and simclr_tf API work outside the checkout"
