// Package guest is capsule-agent's server: the guest's init, which
// serves the agent protocol (package agent) on vsock, mounts the sandbox
// shared from the host over virtio-9p and runs processes in it with
// their stdio on stream connections.
//
// Everything but the System of PID 1 (pid1.go: mounts, switch_root,
// killing everything, power-off) runs as an ordinary process too, on a
// Unix socket that speaks the hybrid vsock handshake (Options.Listen):
// that is how the tests drive it.
package guest
