// Package virtio implements the device side of virtio 1.2 split
// virtqueues over capsule's bounds-checked guest memory.
//
// Everything a guest driver writes into a queue is untrusted: a [Queue]
// checks its layout before use, and [Queue.Pop] validates each descriptor
// chain the way the specification and careful device implementations do:
// every index is below the queue size, a chain has no more descriptors than
// the queue (so a loop ends), indirect tables are inside guest RAM, a
// multiple of 16 bytes and never nested, device-readable buffers come
// before device-writable ones, and every buffer address and length is
// overflow-checked and inside RAM. A violation is an error for that request
// or, for a corrupt ring, an error the device turns into NEEDS_RESET; it is
// never a panic.
package virtio
