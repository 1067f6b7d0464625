package agent

// SetVersion makes Dial claim protocol version v; the returned function
// restores it.
func SetVersion(v uint32) (restore func()) {
	old := version
	version = v
	return func() { version = old }
}
