#!/bin/busybox sh
# /init of the VM lane's initramfs (test/vm/vm.ts builds it; see test/vm/README.md).
# Root: an overlay of the host's / (9p, read-only, tag hostroot) and a tmpfs.
# /cgstep-vm: the host's writable share (tag vmout) with job.sh (and prepare.sh).
# cgstep.mode=busybox: chroot into the overlay and run job.sh; cgstep.mode=systemd:
# run prepare.sh on the overlay, then switch_root to the host's systemd as PID 1.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "CGSTEP-VM: $* (uptime $(cut -d' ' -f1 /proc/uptime) s)" > /dev/console; }
die() { say "FATAL: $*"; poweroff -f; sleep 5; exit 1; }
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay; do
  [ -f /mods/$m.ko ] || continue
  insmod /mods/$m.ko || die "insmod $m"
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || die "mount hostroot"
mount -t tmpfs -o mode=0755 upper /upper || die "mount upper tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || die "mount overlay"
mkdir -p /newroot/cgstep-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmout /newroot/cgstep-vm || die "mount vmout"
mode=busybox
for a in $(cat /proc/cmdline); do
  case "$a" in cgstep.mode=*) mode="${a#cgstep.mode=}" ;; esac
done
say "initramfs ready, mode $mode"
if [ "$mode" = systemd ]; then
  [ -f /newroot/cgstep-vm/prepare.sh ] && { sh /newroot/cgstep-vm/prepare.sh /newroot || die "prepare.sh failed"; }
  umount /proc /sys 2>/dev/null
  mount --move /dev /newroot/dev 2>/dev/null || umount /dev
  exec switch_root /newroot /lib/systemd/systemd $(cat /newroot/cgstep-vm/systemd.args 2>/dev/null)
  die "switch_root failed"
fi
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
# A fresh /tmp, keeping what the lane lists in /cgstep-vm/keep (the tree under
# test when it lives in /tmp, e.g. a clean clone there): moved over the tmpfs.
keeptmp() {
  for k in $(cat /newroot/cgstep-vm/keep 2>/dev/null); do
    case "$k" in "$1"/*) mkdir -p "/keep$k" && mount --bind "/newroot$k" "/keep$k" || die "bind $k" ;; esac
  done
  mount -t tmpfs -o mode=1777 "$2" "/newroot$1"
  for k in $(cat /newroot/cgstep-vm/keep 2>/dev/null); do
    case "$k" in "$1"/*) mkdir -p "/newroot$k" && mount --move "/keep$k" "/newroot$k" || die "move $k" ;; esac
  done
}
keeptmp /tmp tmp
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup || die "mount cgroup2"
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
hostname cgstep-vm
say "job start"
chroot /newroot /bin/sh /cgstep-vm/job.sh < /dev/console > /dev/console 2>&1
say "job end, exit $?"
sync
umount /newroot/cgstep-vm
poweroff -f
