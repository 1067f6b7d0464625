// Package agentpb holds the protobuf messages and the ttrpc service of
// the protocol between capsule and capsule-agent, generated from
// agent.proto (regenerate with `go generate`; it needs protoc,
// protoc-gen-go v1.36.11 and protoc-gen-go-ttrpc v1.2.10). The generated
// agent.pb.go imports unsafe (protobuf's raw descriptor), the one file
// outside *_unsafe.go that does: it is generated, never edited.
package agentpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative agent.proto
