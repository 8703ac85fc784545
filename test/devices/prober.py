# test/devices/prober.py: the process the device tests confine. One JSON
# command a line on stdin, one JSON answer a line on stdout; it never decides
# anything, it reports what the kernel said (an errno name, or "OK").
#   {"op":"open","path":P,"mode":"r"|"w"|"rw"}
#   {"op":"mknod","path":P,"type":"c"|"b","major":M,"minor":N}   (unlinked again on success)
#   {"op":"access","path":P}                                      (access(P, F_OK))
#   {"op":"hammer","paths":[P...],"seconds":S}  -> {"started":true} then counts per path
#   {"op":"cgroup"}                                               (/proc/self/cgroup's v2 line)
import ctypes, errno, json, os, stat, sys, time

libc = ctypes.CDLL(None, use_errno=True)
MODES = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}
FLAGS = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def ename(e):
    return errno.errorcode.get(e, "E%d" % e)


def try_open(path, mode):
    try:
        os.close(os.open(path, MODES[mode] | FLAGS))
        return "OK"
    except OSError as e:
        return ename(e.errno)


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


reply({"ready": os.getpid()})
for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    if op == "open":
        reply({"r": try_open(c["path"], c["mode"])})
    elif op == "mknod":
        kind = stat.S_IFCHR if c["type"] == "c" else stat.S_IFBLK
        try:
            os.mknod(c["path"], kind | 0o600, os.makedev(c["major"], c["minor"]))
            os.unlink(c["path"])
            reply({"r": "OK"})
        except OSError as e:
            reply({"r": ename(e.errno)})
    elif op == "access":
        rc = libc.access(c["path"].encode(), 0)
        reply({"r": "OK" if rc == 0 else ename(ctypes.get_errno())})
    elif op == "hammer":
        counts = {p: {} for p in c["paths"]}
        reply({"started": True})
        end = time.monotonic() + c["seconds"]
        rounds = 0
        while time.monotonic() < end:
            for p in c["paths"]:
                r = try_open(p, "r")
                counts[p][r] = counts[p].get(r, 0) + 1
            rounds += 1
        reply({"r": counts, "rounds": rounds})
    elif op == "cgroup":
        with open("/proc/self/cgroup") as f:
            reply({"r": [l.strip() for l in f if l.startswith("0::")][0][3:]})
    else:
        reply({"error": "unknown op %s" % op})
