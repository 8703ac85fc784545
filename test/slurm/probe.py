# test/slurm/probe.py: what a Slurm task sees. Prints one JSON line: its pid,
# its cgroup v2 path, the GPU variables Slurm gave it, and for each path on the command line the result of
# open(O_RDWR|O_NONBLOCK): "OK" or an errno name (fake GPUs: ENXIO when the
# cgroup allows them, there being no driver; EPERM when the device program denies).
import errno, json, os, sys


def try_open(path):
    try:
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, "E%d" % e.errno)


cgroup = ""
with open("/proc/self/cgroup") as f:
    for line in f:
        if line.startswith("0::"):
            cgroup = line[3:].strip()
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID")}
print(json.dumps({"pid": os.getpid(), "cgroup": cgroup, "env": env, "open": {p: try_open(p) for p in sys.argv[1:]}}), flush=True)
