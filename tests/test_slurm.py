"""The tiny workflow on a real single-node SLURM cluster through `profiles/slurm`: munged,
slurmctld and slurmd (Debian's packages, installed when missing) run from a temporary folder with a
slurm.conf for this machine. Every job of two targets' chains (data, baselines, the base model, a
selection, SFT and its evaluation: one- and two-thread rules) must run as a SLURM job with the CPUs
and memory its rule declares, and its results must equal the shared local run's. Not the whole DAG:
every job pays the executor's submit and status-poll latency, which made the whole tiny DAG the
longest test of the suite, while any other rule's job takes the same path through the profile."""
from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from system_packages import require_commands
from tiny_workflow import ROOT, assert_same_results, failure, rules_run, snakemake, snakemake_env

pytestmark = pytest.mark.slow

SLURM_COMMANDS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
                  "sbatch": "slurm-client", "squeue": "slurm-client", "sinfo": "slurm-client",
                  "srun": "slurm-client"}


@dataclass
class Cluster:
    folder: Path
    conf: Path
    env: dict[str, str]  # for sbatch, squeue and the snakemake run
    daemons: dict[str, subprocess.Popen]

    def logs(self) -> str:
        """The end of every daemon's log, for assertion messages."""
        parts = []
        for path in sorted(self.folder.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def query(self, *args: str) -> str:
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(args)}: {out.stderr}\n{self.logs()}"
        return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_memory_mb(headroom_mb: int = 1024) -> int:
    """RealMemory: slurmd drains a node that reports less memory than slurm.conf claims."""
    with open("/proc/meminfo") as f:
        total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return total_kb // 1024 - headroom_mb


def slurm_conf(folder: Path, node: str, munge_socket: Path) -> str:
    # No accounting (no slurmdbd), no cgroups (proctrack/linuxproc, task/none): what a container
    # or CI machine allows. MinJobAge keeps finished jobs visible to `squeue` (the profile's status
    # command, and this test's check) for an hour.
    return f"""\
ClusterName=llmrec-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={node_memory_mb()} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def wait_for(check, timeout: float, what: str, cluster_logs) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s\n{cluster_logs()}")
        time.sleep(0.5)


def stop(daemons: dict[str, subprocess.Popen]) -> None:
    """Stop exactly the daemons this module started, last started first."""
    for proc in reversed(list(daemons.values())):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    require_commands(SLURM_COMMANDS)
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "bin"):
        (folder / sub).mkdir()
    # A UNIX socket path must stay under ~100 bytes, which a deep pytest folder may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="munge-"))
    socket_dir.chmod(0o755)
    munge_socket = socket_dir / "munge.socket"
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))  # a key of our own: the system's munge, if any, is untouched
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, munge_socket))
    # The jobstep executor drops every SLURM_* variable (SLURM_CONF too) before its inner `srun`.
    # A real cluster's nodes read /etc/slurm/slurm.conf; this one's config is in a temporary
    # folder, so `srun` on PATH is a wrapper that sets SLURM_CONF.
    srun = folder / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nexport SLURM_CONF="{conf}"\nexec "{shutil.which("srun")}" "$@"\n')
    srun.chmod(0o755)
    env = snakemake_env(SLURM_CONF=str(conf))
    env["PATH"] = f"{folder / 'bin'}:{env['PATH']}"

    daemons: dict[str, subprocess.Popen] = {}
    cluster = Cluster(folder, conf, env, daemons)

    def start(name: str, cmd: list[str]) -> None:
        with open(folder / f"{name}.out.log", "w") as out:
            daemons[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)

    def alive() -> None:
        dead = {n: p.returncode for n, p in daemons.items() if p.poll() is not None}
        assert not dead, f"daemon(s) exited: {dead}\n{cluster.logs()}"

    def munge_ready() -> bool:
        alive()
        return munge_socket.exists()

    def node_idle() -> bool:
        alive()
        out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], env=env,
                             capture_output=True, text=True, timeout=30)
        return out.returncode == 0 and out.stdout.split() == [node, "idle"]

    try:
        start("munged", ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                         f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                         f"--seed-file={folder}/munged.seed"])
        wait_for(munge_ready, 30, "munged made no socket", cluster.logs)
        start("slurmctld", ["slurmctld", "-D", "-c", "-f", str(conf)])  # -c: no state of an earlier run
        start("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", node])
        wait_for(node_idle, 90, f"node {node} not idle in sinfo", cluster.logs)
        yield cluster
    finally:
        if daemons.get("slurmctld") and daemons["slurmctld"].poll() is None:
            # jobs a failed or timed-out run left in this (private) cluster
            subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, capture_output=True, timeout=60)
        stop(daemons)
        shutil.rmtree(socket_dir, ignore_errors=True)


def submitted_jobs(log: str) -> dict[str, dict]:
    """Per SLURM job id: the Snakemake job's rule, threads and mem_mb, from the run's output (the
    plugin's `Job N has been submitted with SLURM jobid M` lines and Snakemake's job blocks)."""
    blocks = {}
    for match in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", log, flags=re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), flags=re.M))
        mem = re.search(r"\bmem_mb=(\d+)", fields.get("resources", ""))
        blocks[fields["jobid"]] = {"rule": match.group(1), "threads": int(fields.get("threads", 1)),
                                   "mem_mb": int(mem.group(1)) if mem else None}
    ids = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    return {slurm_id: blocks[job_id] for job_id, slurm_id in ids}


# A chain of one-thread rules (the tiny config's base model, SFT and evaluation) and a rule given two
# threads (`--set-threads`, as a cluster profile would): the baselines, whose numbers (pandas) do not
# depend on the thread count, so the results still equal the local one-thread run's.
TARGETS = ["results/tiny/baselines/metrics.parquet", "results/tiny/llm/sft-open/random/test/metrics.parquet"]


def test_targets_run_as_slurm_jobs_with_local_results(slurm_cluster, tiny_run, tmp_path):
    work = tmp_path / "work"
    planned = snakemake(work, tiny_run.configfile, "-n", *TARGETS)
    assert planned.returncode == 0, failure(planned)
    out = snakemake(work, tiny_run.configfile, *TARGETS, "--profile", str(ROOT / "profiles" / "slurm"),
                    "--set-threads", "baselines=2",
                    env=slurm_cluster.env, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, failure(out) + "\n" + slurm_cluster.logs()

    jobs = submitted_jobs(log)
    assert jobs, f"no SLURM submissions in the output\n{failure(out)}"
    assert not rules_run(log, "localrule"), f"jobs ran outside SLURM: {rules_run(log, 'localrule')}"
    # every job the dry run planned was submitted to SLURM, as often
    expected = rules_run(planned.stdout, "rule")
    assert {"prepare", "baselines", "base_model", "sft", "evaluate"} <= set(expected), expected
    assert rules_run(log, "rule") == expected

    # ...and SLURM ran each to completion with the CPUs (= the rule's threads) and memory asked for
    table = slurm_cluster.query("squeue", "--states=all", "--noheader", "--format=%i|%T|%k|%C|%m",
                                f"--jobs={','.join(jobs)}")
    seen = {}
    for line in table.splitlines():
        job_id, state, comment, cpus, mem = line.split("|")
        seen[job_id] = (state, comment.removeprefix("rule_").split("_wildcards_")[0], int(cpus), mem)
    assert set(seen) == set(jobs), f"squeue lost jobs: {sorted(set(jobs) - set(seen))}"
    for job_id, job in jobs.items():
        state, rule, cpus, mem = seen[job_id]
        assert (state, rule) == ("COMPLETED", job["rule"]), (job_id, seen[job_id], job)
        assert cpus == job["threads"], f"{rule}: {cpus} CPUs for {job['threads']} threads"
        assert mem == f"{job['mem_mb']}M", f"{rule}: SLURM memory {mem}, rule asks mem_mb={job['mem_mb']}"
    assert {j["threads"] for j in jobs.values()} == {1, 2}  # both kinds of rule were checked

    # the data tables these targets make (not the semantic IDs, which only the sid runs need)
    for only in ("tiny/data/interactions", "tiny/data/items.parquet", "tiny/data/samples", "tiny/selection/random",
                 "tiny/baselines/", "tiny/llm/sft-open/random/"):
        assert_same_results(work / "results", tiny_run.results, only=only)
