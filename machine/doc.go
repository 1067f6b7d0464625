// Package machine holds a VM's guest-physical memory and the x86 platform
// structures capsule builds in it: the memory map, the GDT and the page
// tables for direct 64-bit entry.
//
// [GuestMemory] is the only way the rest of capsule touches guest RAM.
// Every access is checked for overflow and range and returns an error
// instead of faulting or panicking, so guest-controlled addresses are safe
// to pass straight in.
package machine
