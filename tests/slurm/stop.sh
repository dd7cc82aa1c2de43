#!/bin/bash
# Stops the single-node Slurm cluster started by tests/slurm/start.sh.
pkill -x slurmd || true
pkill -x slurmctld || true
pkill -x munged || true
