// Package agentpb holds the protobuf messages and the ttrpc service of
// the protocol between capsule and capsule-agent, generated from
// agent.proto (regenerate with `go generate`; it needs protoc,
// protoc-gen-go v1.36.11 and protoc-gen-go-ttrpc v1.2.10).
package agentpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative agent.proto
