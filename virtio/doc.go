// Package virtio implements the device side of virtio 1.2 over the MMIO
// transport (version 2): the register window and device-status state
// machine ([MMIO]), split virtqueues read and written through capsule's
// bounds-checked guest memory ([Queue]), the [Device] interface every
// device implements, queue notifications ([Kick]) and a request/response
// loop for simple devices ([Serve]). The devices themselves live in the
// subpackages blk, net, p9, rng and vsock.
//
// Everything a guest driver writes into a queue is untrusted: a [Queue]
// checks its layout before use, and [Queue.Pop] validates each descriptor
// chain the way the specification and careful device implementations do:
// every index is below the queue size, a chain has no more descriptors than
// the queue (so a loop ends), indirect tables are inside guest RAM, a
// multiple of 16 bytes and never nested, device-readable buffers come
// before device-writable ones, and every buffer address and length is
// overflow-checked and inside RAM. A violation is an error for that request
// or, for a corrupt ring, DEVICE_NEEDS_RESET; it is never a panic. The
// transport ignores queue registers once DRIVER_OK is set and refuses
// features it did not offer, or a driver without VIRTIO_F_VERSION_1.
package virtio
