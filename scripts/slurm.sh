#!/usr/bin/env bash
# Multi-host L2M-GAN training on SLURM: one task per node, all GPUs of a node
# per task. jax.distributed.initialize() (called by l2m_jax/main.py because
# SLURM_NTASKS > 1) reads the coordinator and process ids from SLURM.
#
#   sbatch scripts/slurm.sh /path/to/celeba_hq runs/smile
#
#SBATCH --job-name=l2m_gan
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120          # SIGTERM 2 min before the end: checkpoint and exit
#SBATCH --requeue                  # a requeued job resumes from the latest checkpoint
set -euo pipefail
DATA_DIR=${1:?usage: sbatch scripts/slurm.sh DATA_DIR WORKDIR}
WORKDIR=${2:?usage: sbatch scripts/slurm.sh DATA_DIR WORKDIR}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# Global batch: 8 images per GPU (the original 8 per run, scaled); it must divide over all GPUs.
srun python3 -m l2m_jax.main \
  --config=configs/l2m_celebahq.py \
  --config.data_dir="${DATA_DIR}" \
  --config.batch_size=$((8 * SLURM_NNODES * 8)) \
  --workdir="${WORKDIR}"
