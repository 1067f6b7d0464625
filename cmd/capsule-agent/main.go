// Command capsule-agent is the init of a capsule guest that runs
// programs from a host directory: it serves capsule's agent protocol on
// vsock ports 1024 (control, ttrpc) and 1025 (stdio streams), sets up the
// sandbox the host asks for and runs its processes. See package
// agent/guest.
//
// Usage (as the guest's /init it takes no arguments):
//
//	capsule-agent [--listen PATH]
//
// --listen serves on a Unix socket speaking the hybrid vsock handshake
// instead of vsock, for tests outside a guest.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/capsule-vm/capsule/agent/guest"
)

// version is set by the build (-X main.version=...).
var version = "dev"

func main() {
	guest.MaybeShim()
	fs := flag.NewFlagSet("capsule-agent", flag.ContinueOnError)
	listen := fs.String("listen", "", "serve on this Unix socket (hybrid vsock handshake) instead of vsock")
	// The kernel passes init the command line's unknown words; as PID 1
	// they are ignored.
	if os.Getpid() != 1 {
		if err := fs.Parse(os.Args[1:]); err != nil {
			os.Exit(2)
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(os.Stderr, "capsule-agent: unexpected argument %q\n", fs.Arg(0))
			os.Exit(2)
		}
	}
	err := guest.Run(guest.Options{Name: "capsule-agent " + version, Listen: *listen})
	if err != nil {
		fmt.Fprintf(os.Stderr, "capsule-agent: %v\n", err)
		guest.PowerOff()
		os.Exit(1)
	}
}
