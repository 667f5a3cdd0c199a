#!/usr/bin/env bash
# Install the Debian packages the benchmark and tests read when they are missing: Fashion-MNIST's IDX
# files (dataset-fashion-mnist) and Prometheus (the dashboard test). Needs root (or sudo) and a Debian
# mirror; where neither is at hand, say so and go on: the tests that need them skip with that reason.
set -u
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo -n"
echo "installing ${missing[*]} (apt-get)"
if ! { $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; }; }; then
  echo "warning: could not install ${missing[*]}: run 'apt-get install ${missing[*]}' as root; the tests that need them skip" >&2
fi
exit 0
