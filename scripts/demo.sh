#!/usr/bin/env bash
# The main job: an all-in-one cloud on this machine booting a real instance.
# Starts the controller and a node agent, builds the tiny appliance from Debian packages,
# registers it, boots an instance, shows its console line and runs a command in it over SSH.
set -euo pipefail
cd "$(dirname "$0")/.."
S=.venv/bin/stratus
DATA=${STRATUS_DATA_DIR:-/var/lib/stratuslab}
KEY=$DATA/demo/id_ed25519
NAME=demo-$(date +%H%M%S)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting the all-in-one cloud (controller + node agent)"
$S up --data-dir "$DATA"
$S host list

step "building the tiny appliance from Debian packages"
IMAGE=$($S appliance build tiny --output "$DATA/appliances/tiny.qcow2")

step "registering it as image 'tiny'"
if ! $S image show tiny >/dev/null 2>&1; then
  $S image add "$IMAGE" --name tiny
fi
$S image list

mkdir -p "$(dirname "$KEY")"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C stratus-demo -f "$KEY"

step "booting instance $NAME"
$S run tiny --type t1.micro --key "$KEY.pub" --name "$NAME"
$S list

step "waiting for its console line"
for _ in $(seq 1 120); do
  if $S console "$NAME" | grep -q 'STRATUSLAB-TINY READY'; then break; fi
  sleep 1
done
$S console "$NAME" | grep 'STRATUSLAB-TINY READY'

step "running a command in it over SSH"
for attempt in $(seq 1 30); do
  if $S ssh "$NAME" -i "$KEY" -- 'echo "hello from $(hostname)"; uname -sr; uptime'; then
    ok=1; break
  fi
  sleep 2
done
[ "${ok:-0}" = 1 ] || { echo "SSH did not answer"; exit 1; }

step "done: '$NAME' keeps running. Try: stratus list, stratus console $NAME, stratus ssh $NAME -i $KEY, stratus kill $NAME, stratus down"
