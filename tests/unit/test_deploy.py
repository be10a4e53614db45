"""The deployment examples under deploy/ stay runnable: the RayJob's config validates, the Slurm script starts Ray
(a head, workers on the other nodes) and runs genbatch with the script's arguments."""

import os
import re
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path, PurePosixPath

import yaml

from jobs.config.schema import load_config

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
SBATCH = ROOT / "deploy" / "slurm" / "genbatch.sbatch"


def _pinned_ray_version() -> str:
    (version,) = re.findall(r"^ray==(\S+)$", (ROOT / "requirements.lock").read_text(), flags=re.MULTILINE)
    return version


def _mounted_config(rayjob: dict, documents: list[dict], path: str) -> str:
    """The text of `path` in the head container: a key of a ConfigMap from the same file, mounted there."""
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in head["volumes"]}
    for mount in head["containers"][0]["volumeMounts"]:
        if PurePosixPath(path).parent == PurePosixPath(mount["mountPath"]):
            name = volumes[mount["name"]]["configMap"]["name"]
            (config_map,) = (doc for doc in documents if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name)
            return config_map["data"][PurePosixPath(path).name]
    raise AssertionError(f"{path} is neither in configs/ nor mounted from a ConfigMap of {RAYJOB.name}")


def test_the_rayjob_runs_genbatch_with_a_valid_config_on_gpu_workers(tmp_path):
    documents = list(yaml.safe_load_all(RAYJOB.read_text()))
    (rayjob,) = (doc for doc in documents if doc["kind"] == "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["genbatch", "run"]
    config = argv[2]
    if config.startswith("configs/"):
        load_config(ROOT / config)
    else:
        (tmp_path / "job.yaml").write_text(_mounted_config(rayjob, documents, config))
        job = load_config(tmp_path / "job.yaml")
        assert job.output.path.startswith("s3://") and job.resources.gpus_per_worker >= 1
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pinned_ray_version()
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_the_slurm_script_is_valid_bash_with_sbatch_options():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    options = [line.split()[1] for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH ")]
    assert {"--nodes=4", "--gpus-per-node=8", "--signal=B:TERM@300"} <= set(options)


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f'#!/bin/bash\necho "{name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _slurm_env(tmp_path: Path, genbatch: str) -> dict[str, str]:
    """An environment with stand-ins for srun, scontrol, ray and genbatch (whose body is `genbatch`); each notes
    its arguments in the file $CALLS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    _stub(bin_dir, "scontrol", "printf 'node1\\nnode2\\nnode3\\n'")
    _stub(bin_dir, "srun", 'while [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done; "$@"')
    _stub(bin_dir, "hostname", "echo 10.0.0.1")
    _stub(bin_dir, "ray", "exit 0")
    _stub(bin_dir, "genbatch", genbatch)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_CPUS_PER_TASK": "64",
        "SLURM_GPUS_PER_NODE": "8",
    }


def test_the_slurm_script_starts_a_head_and_workers_and_runs_genbatch(tmp_path):
    env = _slurm_env(tmp_path, genbatch="exit 1")  # some rows failed: the job's exit code too
    args = ["configs/sdxl.yaml", "--set", "output=s3://my-bucket/runs/sdxl"]
    result = subprocess.run(["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    started = [line for line in Path(env["CALLS"]).read_text().splitlines() if line.split()[0] in ("ray", "genbatch")]
    (head,) = (line for line in started if line.startswith("ray start --head"))
    assert head.startswith("ray start --head --node-ip-address=10.0.0.1 --port=6379") and "--num-gpus=8" in head
    assert "ray start --address=10.0.0.1:6379 --num-cpus=64 --num-gpus=8 --block" in started  # once, via srun
    assert f"genbatch run {' '.join(args)} --address 10.0.0.1:6379 --log-format json" in started


def test_slurms_sigterm_reaches_genbatch_and_its_exit_code_is_the_jobs(tmp_path):
    """--signal=B:TERM signals the batch shell only: it must pass the signal on and wait for genbatch's exit."""
    ready = tmp_path / "ready"
    env = _slurm_env(tmp_path, genbatch=f"trap 'exit 143' TERM; touch {ready}; for _ in $(seq 300); do sleep 0.1; done")
    script = subprocess.Popen(["bash", str(SBATCH), "configs/sdxl.yaml"], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 143
    finally:
        script.kill()
