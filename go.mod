module github.com/capsule-vm/capsule

go 1.26.0

require (
	github.com/spf13/pflag v1.1.0
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/sys v0.50.0
	golang.org/x/term v0.48.0
)

require github.com/vishvananda/netns v0.0.5 // indirect
