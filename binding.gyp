{
  "targets": [
    {
      "target_name": "cgstep-infinity",
      "type": "executable",
      "sources": ["native/infinity.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
