#!/bin/bash
#SBATCH --job-name=alignment
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out
#
# Launch one training stage of the handbook on a Slurm cluster, on one or
# more nodes: one `accelerate launch` per node (srun, one task per node), each
# starting one process per GPU.
#
# Usage (from the repository root; Slurm needs logs/ to exist already):
#   mkdir -p logs
#   sbatch --nodes=1 scripts/launch_slurm.sh <stage> <recipe.yaml> <accelerate config> [--key value ...]
#
#   <stage>              sft, dpo, ...: runs scripts/run_<stage>.py
#   <recipe.yaml>        path to any recipe file, e.g. recipes/zephyr-7b-beta/sft/config_full.yaml
#   <accelerate config>  a name in accelerate_configs/ (zero3 -> accelerate_configs/zero3.yaml),
#                        or a path to a .yaml file
#   [--key value ...]    overrides of recipe keys, passed to the training script
#
# Examples:
#   sbatch --nodes=1 scripts/launch_slurm.sh sft recipes/zephyr-7b-beta/sft/config_full.yaml zero3
#   sbatch --nodes=2 --job-name=zephyr-dpo scripts/launch_slurm.sh dpo \
#       recipes/zephyr-7b-beta/dpo/config_full.yaml multi_node --gradient_accumulation_steps 1
#
# The number of machines, processes, the rendezvous address and each node's
# rank come from the Slurm allocation and override whatever the accelerate
# config says. Without Slurm variables it assumes 1 node, rank 0, localhost.
#
# Environment:
#   ALIGNMENT_SLURM_PRINT_ONLY=1  print the command each node would run (one
#                                 line, on stdout) instead of running it; needs
#                                 neither Slurm nor GPUs.
#   MASTER_PORT                   rendezvous port (default 6000).
#   The Python environment is inherited from the shell that ran sbatch; if no
#   virtual environment is active and .venv/ exists in the repository, it is
#   activated.

set -euo pipefail

die() {
    echo "launch_slurm.sh: error: $*" >&2
    exit 1
}

usage="usage: sbatch [--nodes=N] scripts/launch_slurm.sh <stage: sft|dpo|...> <path/to/recipe.yaml> <accelerate config name, e.g. zero3> [--key value ...]"

if [[ $# -lt 3 ]]; then
    echo "$usage" >&2
    exit 2
fi

STAGE=$1
RECIPE=$2
ACCEL=$3
shift 3
# "$@" now holds the recipe overrides.

# ---- Locate the repository ----------------------------------------------------
# sbatch runs a copy of this script from Slurm's spool directory, so its own
# location is only trusted when the training scripts sit next to it;
# otherwise use the directory sbatch was called from.
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f "$script_dir/run_${STAGE}.py" || -d "$script_dir/../accelerate_configs" ]]; then
    ROOT=$(cd "$script_dir/.." && pwd)
elif [[ -n "${SLURM_SUBMIT_DIR:-}" ]]; then
    ROOT=$SLURM_SUBMIT_DIR
else
    ROOT=$PWD
fi

# ---- Check the arguments before launching anything ------------------------------------
[[ "$STAGE" =~ ^[A-Za-z0-9_]+$ ]] || die "invalid stage '$STAGE' (expected e.g. sft or dpo)"
[[ -f "$ROOT/scripts/run_${STAGE}.py" ]] \
    || die "unknown stage '$STAGE': $ROOT/scripts/run_${STAGE}.py not found"

[[ -f "$RECIPE" ]] || die "recipe not found: $RECIPE"
# Training runs from the repository root (output_dir: data/... is relative to
# it); keep a relative recipe path valid from there.
if [[ "$RECIPE" != /* && "$(pwd -P)" != "$(cd "$ROOT" && pwd -P)" ]]; then
    RECIPE="$(cd "$(dirname "$RECIPE")" && pwd)/$(basename "$RECIPE")"
fi

if [[ "$ACCEL" == *.yaml || "$ACCEL" == *.yml ]]; then
    [[ -f "$ACCEL" ]] || die "accelerate config not found: $ACCEL"
    if [[ "$ACCEL" != /* && "$(pwd -P)" != "$(cd "$ROOT" && pwd -P)" ]]; then
        ACCEL="$(cd "$(dirname "$ACCEL")" && pwd)/$(basename "$ACCEL")"
    fi
    CONFIG_FILE=$ACCEL
else
    CONFIG_FILE="accelerate_configs/${ACCEL}.yaml"
    if [[ ! -f "$ROOT/$CONFIG_FILE" ]]; then
        available=""
        for f in "$ROOT"/accelerate_configs/*.yaml; do
            [[ -f "$f" ]] && available+="$(basename "$f" .yaml) "
        done
        available=${available% }
        die "accelerate config not found: $ROOT/$CONFIG_FILE (available: ${available:-none})"
    fi
fi

cd "$ROOT"

# ---- Topology from the Slurm allocation --------------------------------------------
NUM_MACHINES=${SLURM_NNODES:-1}

if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
    GPUS_PER_NODE=$SLURM_GPUS_ON_NODE
elif command -v nvidia-smi >/dev/null 2>&1 \
    && n=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU') && [[ "$n" -gt 0 ]]; then
    GPUS_PER_NODE=$n
else
    GPUS_PER_NODE=8
fi
[[ "$GPUS_PER_NODE" =~ ^[0-9]+$ && "$GPUS_PER_NODE" -gt 0 ]] \
    || die "could not work out the number of GPUs per node (got '$GPUS_PER_NODE')"

WORLD_SIZE=$((NUM_MACHINES * GPUS_PER_NODE))

if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null 2>&1; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
else
    MASTER_ADDR=localhost
fi
MASTER_PORT=${MASTER_PORT:-6000}

# ---- Build the per-node command -------------------------------------------------------
# Every piece is shell-quoted, except the machine rank: under srun it must be
# expanded by each task ($SLURM_PROCID differs per node), so it stays a literal
# variable reference inside the string that srun's bash -c evaluates.
quote() { printf '%q ' "$@"; }

launcher=$(quote accelerate launch \
    --config_file "$CONFIG_FILE" \
    --num_machines "$NUM_MACHINES" \
    --num_processes "$WORLD_SIZE" \
    --main_process_ip "$MASTER_ADDR" \
    --main_process_port "$MASTER_PORT")
program=$(quote "scripts/run_${STAGE}.py" "$RECIPE" "$@")

{
    echo "stage:              $STAGE"
    echo "recipe:             $RECIPE"
    echo "accelerate config:  $CONFIG_FILE"
    echo "nodes x GPUs:       $NUM_MACHINES x $GPUS_PER_NODE = $WORLD_SIZE processes"
    echo "rendezvous:         $MASTER_ADDR:$MASTER_PORT (c10d)"
} >&2

if [[ "${ALIGNMENT_SLURM_PRINT_ONLY:-0}" == "1" ]]; then
    rank=${SLURM_PROCID:-0}
    cmd="${launcher}--machine_rank $(quote "$rank")--rdzv_backend c10d ${program}"
    echo "${cmd% }"
    exit 0
fi

command -v srun >/dev/null 2>&1 \
    || die "srun not found: submit this script with sbatch (or set ALIGNMENT_SLURM_PRINT_ONLY=1 to only print the command)"

if [[ -z "${VIRTUAL_ENV:-}" && -f "$ROOT/.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
fi

cmd="${launcher}--machine_rank \$SLURM_PROCID --rdzv_backend c10d ${program}"
echo "running on each node: ${cmd% }" >&2

# One task per node; srun's exit status is the job's.
srun --nodes="$NUM_MACHINES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$cmd"
