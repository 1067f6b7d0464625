// Package ociimage turns a container image archive into a root file
// system directory and the configuration a run needs.
//
// [Unpack] reads a `docker save` or `podman save` archive (a tar with
// manifest.json), an OCI image layout archive (a tar with oci-layout and
// index.json, as `podman save --format oci-archive` writes) or an OCI
// image layout directory, each optionally gzip-compressed when a file.
// From an archive or index with several images it takes the linux/amd64
// one. It applies the image's layers in order, whiteouts and opaque
// directories included, into <cache>/<config digest hex>/rootfs, once:
// a later call with the same image finds it there.
//
// Unpacking is confined to the root directory whatever the archive
// holds: every name is resolved with openat2(RESOLVE_IN_ROOT), the last
// element is created exclusively and never followed, and hard links are
// made from a descriptor of their target, so absolute names, symbolic
// links in the way, ".." and hard links to outside paths cannot reach
// the host. Each layer's content is checked against the diff ID in the
// image configuration, which the cache directory is named after.
//
// Run as root, files get the owners the archive gives them; run as
// another user, every file belongs to that user (the modes, setuid bits
// included, are kept either way). Device nodes are not created (the
// guest's /dev is a devtmpfs); [Image.Skipped] lists them.
//
// [LookupUser] resolves a Docker-style user ("uid", "uid:gid", "name",
// "name:group") against the image's own /etc/passwd and /etc/group.
package ociimage
