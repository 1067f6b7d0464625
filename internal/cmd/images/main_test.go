package main

import (
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage:"},
		{[]string{"-h"}, 0, "minimal-kernel"},
		{[]string{"-h"}, 0, "default-kernel"},
		{[]string{"-h"}, 0, "agent-initramfs"},
		{[]string{"kernel"}, 2, `unknown target "kernel"`},
		{[]string{"initramfs", "all"}, 2, "Usage:"},
		{[]string{"initramfs", "--bogus"}, 2, "unknown flag"},
	} {
		var stderr strings.Builder
		if code := run(tc.args, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("images %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}
