package hostfs

// SetChown makes fs set owners as when capsule runs as root, or not.
func SetChown(fs *FS, on bool) { fs.chown = on }
