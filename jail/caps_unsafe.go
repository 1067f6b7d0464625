package jail

import "unsafe"

// unsafePointer passes a capability structure to capset(2) by address.
func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }
