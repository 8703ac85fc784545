{
  "targets": [
    {
      "target_name": "cgstep-infinity",
      "type": "executable",
      "sources": ["native/infinity.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    },
    {
      "target_name": "cgstep_bpf",
      "sources": ["native/bpf.c", "native/inotify.c", "native/poll.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-std=gnu11"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
