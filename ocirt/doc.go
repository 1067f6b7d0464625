// Package ocirt is capsule's OCI runtime: what `capsule oci` (also
// installed as capsule-oci) does for podman, conmon and containerd's runc
// shim, each container in a micro-VM of its own (package sandbox).
//
// A bundle (config.json and its root file system, runtime-spec types) is
// loaded and checked by LoadBundle and mapped onto a sandbox VM and the
// agent's ProcessSpec by Bundle.VM and Bundle.Process.
//
// Each container has a state directory, ROOT/ID (mode 0700), that holds:
//
//	state.json    the container's state (State): runc's fields, plus the
//	              monitor's pid and, once it has ended, the exit status
//	monitor.lock  locked (an OFD write lock) by the monitor while it lives:
//	              a container whose lock can be taken has stopped, whatever
//	              state.json says (a SIGKILLed monitor writes nothing)
//	monitor.sock  the monitor's Unix socket (mode 0600): start and kill
//	vm/           the VM's private directory (the agent's vsock socket)
//
// The monitor (RunMonitor) is the process `create` leaves behind and
// whose pid goes into --pid-file: a VMM that boots the VM, waits for
// start, runs the container's process through the agent with the
// monitor's own stdin, stdout and stderr (those create was given), and
// exits with the process's status (128+N for signal N) once it has ended
// and the VM has stopped, so that whoever waits for that pid (conmon, the
// shim) sees the container's status. Later commands talk to it over its
// socket (Call) in one JSON line each way.
package ocirt
