package main

import (
	"strings"
	"syscall"
	"testing"

	"github.com/capsule-vm/capsule/vmm"
)

func TestStoppedBySignalNamesTheSignal(t *testing.T) {
	status, msg := outcome(vmm.Result{Reason: vmm.ReasonCanceled}, signalError{syscall.SIGTERM}, 0)
	if status != 128+15 || msg != "stopped by SIGTERM, VM stopped" {
		t.Fatalf("outcome = %d, %q", status, msg)
	}
	if _, msg := outcome(vmm.Result{Reason: vmm.ReasonCanceled}, signalError{syscall.SIGINT}, 0); !strings.HasPrefix(msg, "stopped by SIGINT") {
		t.Fatalf("SIGINT: %q", msg)
	}
	if status, msg := outcome(vmm.Result{Reason: vmm.ReasonCanceled}, nil, 0); status != 1 || strings.Contains(msg, "nil") || msg == "" {
		t.Fatalf("no cause: %d %q", status, msg)
	}
}
