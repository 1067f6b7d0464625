//go:build !amd64

package guest

// markBoot: capsule guests are x86-64; elsewhere there is no marker.
func markBoot() {}
