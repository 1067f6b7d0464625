package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
)

// envCPUProfile names the file prefix of CPU profiles, for profiling the
// VMM and its devices (in the rig, say): with it set, every capsule
// process writes a CPU profile of its whole life to PREFIX.PID, for go
// tool pprof. It is no flag: a benchmark's child processes inherit it.
const envCPUProfile = "CAPSULE_CPUPROFILE"

// startProfile starts the CPU profile that envCPUProfile asks for and
// returns what stops and writes it.
func startProfile() (stop func()) {
	prefix := os.Getenv(envCPUProfile)
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "." + strconv.Itoa(os.Getpid()))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "capsule: %s: %v\n", envCPUProfile, err)
		if f != nil {
			f.Close()
		}
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
