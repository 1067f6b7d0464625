// Package jail confines a capsule VMM process the way Firecracker's jailer
// and seccomp filters confine Firecracker: a syscall allow-list installed
// on every thread once the VM is set up (seccomp.go), and a jail of new
// namespaces, a root holding only the VM's files, an unprivileged user
// and a cgroup with CPU and memory limits (jail.go).
//
// The package knows nothing of VMs: callers say which files a VM needs
// and when set-up is done.
package jail
