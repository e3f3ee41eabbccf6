#!/usr/bin/env bash
# Fashion-MNIST for machines that reach only a package registry: Debian's dataset-fashion-mnist
# installs the four IDX files under /usr/share/datasets/fashion-mnist/ (tunelab verifies them).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get: download Fashion-MNIST's four IDX .gz files and pass --data-file DIR" >&2
  exit 1
fi
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -qq
$sudo apt-get install -y -qq dataset-fashion-mnist
