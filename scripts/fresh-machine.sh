#!/usr/bin/env bash
# The README's commands as on a machine that never saw the project: a fresh clone of the
# committed HEAD (none of the working tree's venvs, build/ or out/), HOME and TMPDIR pointed at
# empty folders, pip's cache off and this machine's own pip settings (local wheel folders and
# indexes) ignored, so every package comes from the registry by name. `.ci/run` runs it.
#   scripts/fresh-machine.sh                  make run, then make test
#   scripts/fresh-machine.sh run test test    each make target in turn (here: the suite twice)
#   KEEP=1 scripts/fresh-machine.sh ...       keep the clone afterwards, to look at it
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=("$@")
if (( ${#targets[@]} == 0 )); then targets=(run test); fi

root="$(mktemp -d "${TMPDIR:-/tmp}/sparkinfer-fresh.XXXXXX")"
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$root"' EXIT; fi
git clone --quiet --no-hardlinks "$repo" "$root/clone"
mkdir -p "$root/home" "$root/tmp"
echo "fresh-machine: $(git -C "$root/clone" rev-parse --short HEAD) in $root/clone" >&2

# What a new machine has: its PATH, Java, the interpreters pyenv installed (PYENV_ROOT), the
# CA bundle and proxies that reach the registry. Nothing else of this session's environment.
keep=(PATH LANG LC_ALL JAVA_HOME PYENV_ROOT PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE
      HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy CI)
environment=()
for name in "${keep[@]}"; do
    if [[ -n "${!name:-}" ]]; then environment+=("$name=${!name}"); fi
done
environment+=("HOME=$root/home" "TMPDIR=$root/tmp" PIP_NO_CACHE_DIR=1 PIP_CONFIG_FILE=/dev/null)

cd "$root/clone"
for target in "${targets[@]}"; do
    echo "fresh-machine: make $target" >&2
    env -i "${environment[@]}" make "$target"
done
