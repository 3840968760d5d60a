#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try the slurm profile without a cluster (and for its test,
# tests/test_dag.py::test_slurm_localhost_runs_the_ci_grid). Needs root and Debian's packages:
#   apt-get install -y slurm-wlm munge && workflow/profiles/slurm/localhost.sh
# It writes /etc/slurm/slurm.conf (node "localhost", partition "debug", no accounting database: query job
# states with --slurm-status-command squeue; MinJobAge keeps finished jobs visible to squeue) and starts
# munged, slurmctld and slurmd if they are not running. The node declares CPUS (default 4, the profile's
# largest request; SlurmdParameters=config_overrides lets a smaller machine take it) and MEM_MB of memory.
set -euo pipefail
CPUS=${CPUS:-4}
MEM_MB=${MEM_MB:-16000}
for cmd in munged slurmctld slurmd scontrol; do
    command -v "$cmd" >/dev/null || { echo "localhost.sh: $cmd not found; apt-get install slurm-wlm munge" >&2; exit 1; }
done
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/slurm
chown -R munge:munge /run/munge /etc/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=localhost
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
MinJobAge=600
ReturnToService=2
NodeName=localhost CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x munged >/dev/null || runuser -u munge -- munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T | grep -q idle; then sinfo; exit 0; fi
    sleep 1
done
echo "localhost.sh: the node did not come up; see /var/log/slurm/" >&2
exit 1
